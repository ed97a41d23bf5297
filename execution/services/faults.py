"""Crash points for the executor's fault tests: a no-op unless EXECUTION_CRASH_POINT is set.

The SIGKILL tests run a real worker process with `EXECUTION_CRASH_POINT=<name>` and expect
it to die at exactly that point, as a power cut or an OOM kill would, with no `finally`
blocks, no rollback handlers and no goodbye to the database. Points:

* ``after_sign``: the attempt (signature + signed bytes + last valid height) is committed,
  nothing has been sent.
* ``after_send``: the transaction was handed to the RPC node; its outcome is not recorded.

The variable is read on every call (not at import), so only a process started with it set
can crash; it is never set in the web or worker processes `make run` starts.
"""

from __future__ import annotations

import os
import signal

CRASH_POINT_ENV = "EXECUTION_CRASH_POINT"


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_POINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
