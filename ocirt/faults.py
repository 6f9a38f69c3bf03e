"""Crash points, for the fault-injection tests only.

With ``OCIRT_TEST_CRASH_AT=N`` in its environment the runtime SIGKILLs itself at the N-th crash point it
reaches (counting from 1), the way an OOM kill or a killed shim would stop it between two steps. The points
sit after each step that changes something durable (a directory, a file, a cgroup, a process), so a test can
stop every command at every step and check that `delete --force` still reclaims all of it. Without the
variable a crash point costs one comparison. Forked children (the intermediate, the init, hooks) never stop
here: only the process that read the variable counts.
"""

import os

_AT = os.environ.get("OCIRT_TEST_CRASH_AT", "")
_TARGET = int(_AT) if _AT.isdigit() else 0
_PID = os.getpid()
_reached = 0


def crash_point() -> None:
    global _reached
    if not _TARGET:
        return
    _reached += 1
    if _reached == _TARGET and os.getpid() == _PID:
        os.kill(_PID, 9)
