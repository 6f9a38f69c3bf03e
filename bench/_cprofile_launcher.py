"""Run bin/ocirt under cProfile: `python3 -IS _cprofile_launcher.py OUT.prof /path/to/bin/ocirt ARGS...`.

The launcher's own code runs unchanged (it sets sys.path from its __file__), so the profile covers the whole
in-process part, imports included. Only the process that started writes the profile: the forked
intermediate and init leave through execve or os._exit and never reach the dump.
"""

import cProfile
import os
import sys

out_path = sys.argv.pop(1)
launcher = sys.argv[1]
sys.argv = sys.argv[1:]
with open(launcher) as f:
    code = compile(f.read(), launcher, "exec")
profiler = cProfile.Profile()
owner = os.getpid()
_real_exit = os._exit


def _exit_after_the_dump(code: int) -> None:
    # bin/ocirt leaves through os._exit, which would skip the dump below; the forked children still
    # leave at once.
    if os.getpid() == owner:
        raise SystemExit(code)
    _real_exit(code)


os._exit = _exit_after_the_dump
status = 0
profiler.enable()
try:
    exec(code, {"__name__": "__main__", "__file__": launcher})
except SystemExit as exit_:
    status = exit_.code if isinstance(exit_.code, int) else 1
finally:
    profiler.disable()
    if os.getpid() == owner:
        profiler.dump_stats(out_path)
sys.exit(status)
