"""`run`: create and start in one command; in the foreground, the container lives as long as its caller
and ends with its process, whose exit code `run` returns."""

from __future__ import annotations

import os

from ocirt import log
from ocirt.container import CreateOptions, create, start
from ocirt.errors import OcirtError
from ocirt.execute import reap_orphans, wait_foreground
from ocirt.teardown import RECORDER_TIMEOUT, delete


def run(opts: CreateOptions, *, keep: bool = False) -> int:
    """create + start; in the foreground, wait and return the process's exit code (128+signal if killed).

    A foreground run ends the container when its caller dies (the caller can no longer stop it or read
    its status): the init dies with this process (see linux/init.py), and this process learns of its
    caller's death and kills the init. `--detach` is for containers meant to outlive their caller."""
    from ocirt import syscalls as sc

    watch = None
    if not opts.detach:
        # The init is the intermediate's child: becoming a subreaper makes it ours when the intermediate exits.
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        watch = CallerWatch()
    spawned = create(opts, for_run=True)
    try:
        if watch is not None and watch.gone:
            raise OcirtError(f"container {opts.container_id!r} not started: the caller of run has exited")
        start(opts.root, opts.container_id)
    except BaseException:
        if not opts.detach:
            _cleanup_after_run(opts)
        raise
    if watch is None:
        return 0
    watch.on_gone = lambda: _kill_pid(spawned.pid)
    exit_code = wait_foreground(spawned)
    watch.on_gone = None
    if spawned.recorder is None:
        if not keep:
            _cleanup_after_run(opts)
        return exit_code
    return _finish_learning_run(opts, spawned.recorder, exit_code, keep)


def _finish_learning_run(opts: CreateOptions, recorder, exit_code: int, keep: bool) -> int:
    """The recorder writes the profile once no process uses the filter: every zombie reaped, which is
    this process's job (the init's children come to it, the subreaper). What remains alive after the
    program's end (a container without a pid namespace) goes with the container's deletion."""
    try:
        result = recorder.result(1.0, reap=reap_orphans)
    finally:
        if not keep:
            _cleanup_after_run(opts, wait_for_learning=False)
    if result is None and not keep:
        result = recorder.result(RECORDER_TIMEOUT, reap=reap_orphans)
    learn = opts.seccomp_learn
    if result is None:
        learn.summary = (f"processes of {opts.container_id!r} still use its filter: {learn.profile} is "
                         "written when the last one exits")
        log.warning(f"--seccomp-learn: {learn.summary}")
        return exit_code
    if not result.ok:
        raise OcirtError(f"--seccomp-learn: {result.message}", exit_code=exit_code or 1)
    learn.summary = result.message
    log.info(f"seccomp-learn: {result.message}")
    log.debug(f"seccomp-learn: {result.notifications} syscalls recorded; the runtime's after loading the "
              f"filter: {' '.join(result.runtime) or 'none'}")
    return exit_code


# A real-time signal that nothing forwards to the container: the kernel also sends a parent-death signal
# when only the thread that forked us exits, and such a stray signal must not reach the container.
CALLER_GONE_SIGNAL = 64  # SIGRTMAX


class CallerWatch:
    """Learn, through PR_SET_PDEATHSIG, that the process which started this one has died (a job's
    `/bin/sh -c` wrapper killed by Slurm, a shell that exited). The signal only counts if the parent
    has really changed."""

    def __init__(self) -> None:
        import _signal

        from ocirt import syscalls as sc

        self.caller = os.getppid()
        self.gone = False
        self.on_gone = None
        _signal.signal(CALLER_GONE_SIGNAL, self._signalled)
        sc.prctl(sc.PR_SET_PDEATHSIG, CALLER_GONE_SIGNAL)
        if os.getppid() != self.caller:
            # Died before the prctl: no signal will come.
            self._signalled(CALLER_GONE_SIGNAL, None)

    def _signalled(self, _signum, _frame) -> None:
        if os.getppid() == self.caller:
            return
        self.gone = True
        if self.on_gone is not None:
            self.on_gone()

    @property
    def on_gone(self):
        return self._on_gone

    @on_gone.setter
    def on_gone(self, action) -> None:
        self._on_gone = action
        if action is not None and self.gone:
            action()


def _kill_pid(pid: int) -> None:
    # The init is our child until we reap it, so its pid cannot have been reused.
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _cleanup_after_run(opts: CreateOptions, *, wait_for_learning: bool = True) -> None:
    try:
        delete(opts.root, opts.container_id, force=True, wait_for_learning=wait_for_learning)
    except OcirtError as err:
        log.warning(f"cleanup after run: {err}")
