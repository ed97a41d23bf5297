"""`make run` stops everything on Ctrl-C: a child that ignores SIGTERM is killed with the
processes it forked (the worker cluster's workers), none left behind."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from config.launcher import _stop

STUBBORN = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
for _ in range(3):
    if os.fork() == 0:
        break
time.sleep(120)
"""


def test_a_child_that_will_not_stop_is_killed_with_its_forks(monkeypatch):
    child = subprocess.Popen([sys.executable, "-c", STUBBORN])
    deadline = time.monotonic() + 10
    while len(psutil.Process(child.pid).children(recursive=True)) < 3:
        assert time.monotonic() < deadline, "the child never forked"
        time.sleep(0.05)
    forks = psutil.Process(child.pid).children(recursive=True)
    real_wait = subprocess.Popen.wait

    def quick_wait(self, timeout=None):  # the launcher's 15 s grace, shortened
        return real_wait(self, timeout=None if timeout is None else 0.5)

    monkeypatch.setattr(subprocess.Popen, "wait", quick_wait)

    assert _stop([("worker", child)], 0) == 0

    assert child.poll() is not None
    gone, alive = psutil.wait_procs(forks, timeout=5)
    assert not alive, alive
