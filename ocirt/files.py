"""The state store's file primitives: a read bounded before anything is allocated, and a write that is
whole or not there at all. The saved config uses them too."""

from __future__ import annotations

import os

from ocirt.errors import OcirtError, why

_FILE_MODE = 0o600


class Unreadable(ValueError):
    """A state (or saved config) file that can't be what ocirt wrote: missing, too large, not JSON."""


def read_all(fd: int, limit: int) -> bytes:
    """Everything up to ``limit`` bytes; more than that is an error, so no file can take all memory."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, min(1 << 20, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise Unreadable(f"larger than {limit} bytes")


def write_file_atomic(dir_fd: int, name: str, data: bytes, *, what: str) -> None:
    """Write ``name`` in the directory ``dir_fd`` as a whole or not at all: a temporary file, every byte
    written (a short write, such as on a full disk, is an error), then renamed into place.

    No fsync (runc makes none either): the rename alone is atomic against a killed runtime, which is
    what state must survive. What an fsync adds is durability across a power loss, and after a reboot
    the processes a state describes are gone anyway (a state left unreadable is reclaimed by
    ``delete --force``). On a disk-backed --root it cost 0.4 ms a file, six files a create."""
    tmp = f".{name}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE,
                     dir_fd=dir_fd)
    except OSError as err:
        raise OcirtError(f"cannot save {what}: {why(err)}") from None
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(28, "short write")
            view = view[written:]
        os.close(fd)
        fd = -1
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as err:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise OcirtError(f"cannot save {what}: {why(err)}") from None
