"""Exceptions that carry a message for people and the exit code the CLI returns."""

import os


def why(err: OSError) -> str:
    """The kernel's reason for ``err`` as it reads in a message: "no such file or directory"."""
    return os.strerror(err.errno).lower() if err.errno else str(err)


class OcirtError(Exception):
    """Base of every error ocirt reports. ``str(err)`` is the one-line message.

    An error from the kernel also says what failed, as fields a program can read (the API's callers, the
    ``--log-format json`` entry): ``op``, the operation ("mount", "mkdir", "execve", ...); ``path``, what it
    acted on; ``errno``, the kernel's number; ``hint``, what the user can do about it. The message already
    holds op, path and the errno's text; the hint follows it after "; "."""

    exit_code = 1
    FIELDS = ("op", "path", "errno", "hint")
    # False where the kernel's error is not the news: "container ... does not exist" comes from an ENOENT.
    errno_from_context = True

    def __init__(self, message: str, exit_code: int | None = None, *, op: str | None = None,
                 path: str | None = None, errno: int | None = None, hint: str | None = None):
        super().__init__(f"{message}; {hint}" if hint else message)
        if exit_code is not None:
            self.exit_code = exit_code
        self.op = op
        self.path = path
        self.errno = errno
        self.hint = hint

    @classmethod
    def from_os(cls, err: OSError, op: str, path: str | None = None, *, what: str | None = None,
                hint: str | None = None, exit_code: int | None = None):
        """``err`` as ocirt says it: "<what>: <why>", where ``what`` defaults to "<op> <path>"."""
        path = path if path is not None else filename_of(err)
        if what is None:
            what = f"{op} {path}" if path else op
        return cls(f"{what}: {why(err)}", exit_code, op=op, path=path, errno=err.errno, hint=hint)

    @classmethod
    def rebuilt(cls, message: str, exit_code: int | None = None, fields: dict | None = None):
        """An error raised again elsewhere (the init's in the runtime, the API helper's in its client):
        ``message`` is already whole, hint included, and the fields are set as they were."""
        err = cls.__new__(cls)  # a subclass's own __init__ may take other arguments
        OcirtError.__init__(err, message, exit_code)
        for name in cls.FIELDS:
            setattr(err, name, (fields or {}).get(name))
        return err

    def add_hint(self, hint: str) -> None:
        self.hint = hint
        self.args = (f"{self.args[0]}; {hint}", *self.args[1:])

    def fields(self) -> dict:
        """The fields that are known, by name. An error raised while handling an OSError (``from None``
        hides it from tracebacks, not from ``__context__``) has that error's errno."""
        if self.errno is None and self.errno_from_context:
            self.errno = errno_of(self.__context__)
        return {name: getattr(self, name) for name in self.FIELDS if getattr(self, name, None) is not None}


class annotated:
    """``with annotated(op, path):`` gives an OcirtError raised inside the operation and path it failed
    in, when it names none of its own; ``hint(errno)`` may add what the user can do about it."""

    def __init__(self, op: str, path: str | None = None, hint=None):
        self.op = op
        self.path = path
        self.hint = hint

    def __enter__(self) -> "annotated":
        return self

    def __exit__(self, kind, err, traceback) -> None:
        if not isinstance(err, OcirtError):
            return
        if err.op is None:
            err.op = self.op
            if err.path is None:
                err.path = self.path
        if self.hint is not None and err.hint is None:
            hint = self.hint(err.fields().get("errno"))
            if hint:
                err.add_hint(hint)


def filename_of(err: OSError) -> str | None:
    """The file an OSError names, as text."""
    return None if err.filename is None else str(err.filename)


def errno_of(err: BaseException | None) -> int | None:
    """The errno of ``err`` or of the first OSError it was raised in the handling of."""
    while err is not None:
        if isinstance(err, OSError) and err.errno:
            return err.errno
        if isinstance(err, OcirtError) and err.errno:
            return err.errno
        err = err.__context__
    return None


class ConfigError(OcirtError):
    """config.json is unreadable, malformed or violates the schema."""


class ContainerNotFound(OcirtError):
    """No container with this id: the text 'does not exist' is what engines match on."""

    errno_from_context = False

    def __init__(self, container_id: str):
        super().__init__(f"container {container_id!r} does not exist")


class ContainerExists(OcirtError):
    errno_from_context = False

    def __init__(self, container_id: str):
        super().__init__(f"container with id {container_id!r} already exists")


class InvalidState(OcirtError):
    """The operation is not allowed in the container's current status."""

    errno_from_context = False


class NotRunning(InvalidState):
    """Engines match on the text 'container not running'."""

    def __init__(self, container_id: str = ""):
        super().__init__("container not running")


class InitError(OcirtError):
    """The container's init failed before execve; the message and fields come from the init."""

    # The class of the error in the init ("RootfsError", "HookError", ...), when it said.
    kind: str | None = None


class CgroupError(OcirtError):
    pass


class HookError(OcirtError):
    pass
