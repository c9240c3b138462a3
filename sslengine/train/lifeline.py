"""Tie a process's life to its parent's (Linux PR_SET_PDEATHSIG).

The training group runs in its own session (so cancel can signal it as a whole), which means a
SIGKILLed worker would otherwise leave it running unsupervised, holding devices. The launcher
and every rank ask the kernel for SIGKILL when their parent dies: worker dies -> launcher dies
-> ranks die. Elsewhere than Linux this is a no-op (the heartbeat watchdog still marks the
run lost).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        return
    # the parent may have died between fork and prctl: then we are already orphaned
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)
