"""The supervisor's cancel escalation against real process groups: grace, SIGTERM, SIGKILL.

`supervise_run` waits on its training group with `wait_group` + `GroupStop`; these tests drive
the same two with a group whose script we control (a leader and two members, as the launcher
and its ranks), so no signal is mocked. Every member logs to `<pid>.log`, with
`time.monotonic()` (one clock for all processes of the host): `ready`, `TERM` when SIGTERM
arrives, `alive` every 50 ms; the leader, when it dies of SIGTERM itself, first logs how its
members ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from sslengine.train.supervisor import GroupStop, group_alive, kill_group, wait_group

GROUP = r"""
import os, signal, subprocess, sys, time

out, mode, role = sys.argv[1], sys.argv[2], sys.argv[3]
log = open(os.path.join(out, f"{os.getpid()}.log"), "a", buffering=1)


def record(*what):
    log.write(" ".join(map(str, (*what, time.monotonic()))) + "\n")


members = []


def on_term(signum, frame):
    record("TERM")
    if mode == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # and any further SIGTERM
        return
    for m in members:  # mode "exit": the leader reaps its members, then all die of SIGTERM
        record("member", m.pid, m.wait(10))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


signal.signal(signal.SIGTERM, on_term)
if role == "leader":  # members stay in the leader's process group
    members = [subprocess.Popen([sys.executable, __file__, out, mode, "member"]) for _ in "ab"]
record("ready")
while True:
    record("alive")
    time.sleep(0.05)
"""


def _records(out: Path) -> dict[int, list[tuple[str, ...]]]:
    return {
        int(f.stem): [tuple(line.split()) for line in f.read_text().splitlines()]
        for f in out.glob("*.log")
    }


def _times(records, what: str) -> list[float]:
    return [float(r[-1]) for r in records if r[0] == what]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # reaped by whoever adopts
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def start_group(tmp_path):
    """`start(mode)` -> (leader Popen, log dir) once the leader and its two members are ready;
    the group is SIGKILLed at teardown whatever happened."""
    script = tmp_path / "group.py"
    script.write_text(GROUP)
    leaders: list[subprocess.Popen] = []

    def start(mode: str) -> tuple[subprocess.Popen, Path]:
        out = tmp_path / mode
        out.mkdir()
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out), mode, "leader"], start_new_session=True
        )
        leaders.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            recs = _records(out)
            if len(recs) == 3 and all(any(r[0] == "ready" for r in rs) for rs in recs.values()):
                return proc, out
            assert proc.poll() is None, f"the group's leader exited with {proc.returncode}"
            time.sleep(0.05)
        raise AssertionError(f"the group did not start: {_records(out)}")

    yield start
    for proc in leaders:
        kill_group(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_group_ignoring_sigterm_gets_sigkill_after_kill_after_s(start_group):
    grace_s, kill_after_s = 0.3, 1.0
    proc, out = start_group("ignore")
    members = set(_records(out))
    stop = GroupStop(proc.pid, grace_s, kill_after_s)
    stop.request()  # what supervise_run's tick does when the run's cancel flag is seen
    rc = wait_group(proc, stop, poll_s=0.05)
    returned_at = time.monotonic()

    assert rc == -signal.SIGKILL
    assert stop.termed_at is not None and stop.killed_at is not None
    assert stop.termed_at - stop.requested_at >= grace_s
    assert stop.killed_at - stop.termed_at >= kill_after_s  # SIGKILL not before kill_after_s
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in members) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in members), "members outlived SIGKILL"

    records = _records(out)
    for pid, recs in records.items():
        (termed,) = _times(recs, "TERM")  # every member got SIGTERM once, ignored the rest
        assert stop.termed_at <= termed < stop.killed_at, (pid, recs)
        # it kept running after SIGTERM, for most of kill_after_s: what ended it was SIGKILL
        last_alive = max(_times(recs, "alive"))
        assert stop.termed_at + kill_after_s / 2 <= last_alive <= returned_at, (pid, recs)
    # the supervisor's SIGKILL on the way out finds nothing and raises nothing
    kill_group(proc.pid, signal.SIGKILL)


def test_group_exiting_on_sigterm_is_not_sigkilled(start_group):
    grace_s, kill_after_s = 0.3, 5.0
    proc, out = start_group("exit")
    members = set(_records(out)) - {proc.pid}
    stop = GroupStop(proc.pid, grace_s, kill_after_s)
    stop.request()
    rc = wait_group(proc, stop, poll_s=0.05)

    assert rc == -signal.SIGTERM
    assert stop.termed_at is not None and stop.termed_at - stop.requested_at >= grace_s
    assert stop.killed_at is None
    assert time.monotonic() - stop.termed_at < kill_after_s
    leader = _records(out)[proc.pid]
    # the members died of that SIGTERM too (the leader reaped them: -15, not -9)
    assert {int(r[1]): int(r[2]) for r in leader if r[0] == "member"} == {
        pid: -signal.SIGTERM for pid in members
    }
    assert not group_alive(proc.pid)
    kill_group(proc.pid, signal.SIGKILL)  # supervise_run's final sweep: a no-op, no error


def test_no_signal_without_a_request_and_leader_exit_ends_the_wait(start_group):
    proc, out = start_group("ignore")
    stop = GroupStop(proc.pid, grace_s=0.0, kill_after_s=0.0)
    for _ in range(5):
        stop.step()
        time.sleep(0.02)
    assert stop.termed_at is None and not any(_times(r, "TERM") for r in _records(out).values())
    os.kill(proc.pid, signal.SIGKILL)  # the launcher ends on its own (crash)
    assert wait_group(proc, stop, poll_s=0.05) == -signal.SIGKILL
    assert stop.termed_at is None and stop.killed_at is None
