"""Exceptions that carry a message for people and the exit code the CLI returns."""

import os


def why(err: OSError) -> str:
    """The kernel's reason for ``err`` as it reads in a message: "no such file or directory"."""
    return os.strerror(err.errno).lower() if err.errno else str(err)


class OcirtError(Exception):
    """Base of every error ocirt reports. ``str(err)`` is the one-line message."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(OcirtError):
    """config.json is unreadable, malformed or violates the schema."""


class ContainerNotFound(OcirtError):
    """No container with this id: the text 'does not exist' is what engines match on."""

    def __init__(self, container_id: str):
        super().__init__(f"container {container_id!r} does not exist")


class ContainerExists(OcirtError):
    def __init__(self, container_id: str):
        super().__init__(f"container with id {container_id!r} already exists")


class InvalidState(OcirtError):
    """The operation is not allowed in the container's current status."""


class NotRunning(InvalidState):
    """Engines match on the text 'container not running'."""

    def __init__(self, container_id: str = ""):
        super().__init__("container not running")


class InitError(OcirtError):
    """The container's init failed before execve; the message comes from the init."""


class CgroupError(OcirtError):
    pass


class HookError(OcirtError):
    pass
