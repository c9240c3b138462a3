"""What every benchmark shares: the machine report, the CIFAR-10 cache, medians.

Benchmarks print ratios of contenders measured side by side in one process (interleaved,
repeated, median), so a busy or slow machine moves both sides together; they never assert on
time.
"""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CIFAR_TGZ = ROOT.parent / "shared" / "datasets" / "cifar10" / "cifar10-jpg.tar.gz"
DEFAULT_CACHE = ROOT / "var" / "bench-cache"


def machine_report() -> str:
    """CPU model, cores, load average, library versions: what the numbers were measured on."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, load average (1/5/15 min) {load}; "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )


def load_average() -> float:
    """1-minute load average (0 where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def cifar_train(max_per_class: int, cache_dir: Path = DEFAULT_CACHE):
    """CIFAR-10 train split from the shared archive, decoded once into the uint8 cache."""
    from sslengine.data.datasets import load_dataset

    if not CIFAR_TGZ.is_file():
        sys.exit(f"bench needs the CIFAR-10 archive at {CIFAR_TGZ}")
    return load_dataset("cifar10", CIFAR_TGZ, "train", 32, cache_dir, max_per_class=max_per_class)


def scratch_home(prefix: str) -> Path:
    """A temporary SSL_HOME (store, checkpoints) removed when the process exits."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """'median (min-max)' for a report line."""
    return f"{median(values):.1f} ({min(values):.1f}-{max(values):.1f})"
