"""Exec-time LSM labels: ``process.apparmorProfile`` and ``process.selinuxLabel``.

Both are written to the init's own ``attr/.../exec`` file and take effect at its ``execve``. Writes go
through the private procfs instance of ``ocirt.linux.procfs``, so a mount the container controls can't
redirect them.

On a host without the LSM, a config that asks for a label fails, as with runc: runc refuses an
SELinux label when SELinux is disabled ("selinux label is specified in config, but selinux is disabled
or not supported") and fails the container's init when it can't write an AppArmor profile. ocirt refuses
both in the parent (``check_host_support``), before anything is created, with a message naming the field.
``linux.mountLabel`` is refused the same way (and also where SELinux is enabled: ocirt does not apply it).
An empty or absent value asks for nothing and is accepted everywhere.

Whether an LSM is enabled is read from the host's ``/sys`` and cached, so the parent must ask (through
``check_host_support``) before the fork: the init, after ``pivot_root``, sees the container's ``/sys``.
"""

from __future__ import annotations

import errno
import os

from ocirt import syscalls
from ocirt.errors import ConfigError, OcirtError, why
from ocirt.linux import procfs

SELINUX_MAGIC = 0xF97CFF8C

_enabled: dict[str, bool] = {}


def apparmor_enabled() -> bool:
    """AppArmor is enabled: securityfs shows it and the module says so (runc's test)."""
    if "apparmor" not in _enabled:
        enabled = False
        if os.path.isdir("/sys/kernel/security/apparmor"):
            try:
                with open("/sys/module/apparmor/parameters/enabled", "rb") as f:
                    enabled = f.read(1) == b"Y"
            except OSError:
                pass
        _enabled["apparmor"] = enabled
    return _enabled["apparmor"]


def _selinuxfs_mounted() -> bool:
    try:
        fd = os.open("/sys/fs/selinux", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            if syscalls.fstatfs_type(fd) == SELINUX_MAGIC:
                return True
        except OSError:
            pass
        finally:
            os.close(fd)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            return any(" - selinuxfs " in line for line in f)
    except OSError:
        return False


def selinux_enabled() -> bool:
    """SELinux is enabled: selinuxfs is mounted and this process has a label other than "kernel"."""
    if "selinux" not in _enabled:
        enabled = False
        if _selinuxfs_mounted():
            try:
                with open("/proc/thread-self/attr/current", "rb") as f:
                    enabled = f.read().rstrip(b"\0\n") not in (b"", b"kernel")
            except OSError:
                pass
        _enabled["selinux"] = enabled
    return _enabled["selinux"]


def check_host_support(apparmor_profile: str | None, selinux_label: str | None,
                       mount_label: str | None = None) -> None:
    """Refuse, before the fork, a label the host can't apply. Also caches what the init will need.

    ``linux.mountLabel`` is refused whenever it is set: without SELinux there is nothing to label mounts
    with, and with it ocirt does not pass the context to the container's mounts. Dropping it silently
    would break runtime.md: "If the runtime cannot apply a property as specified in the configuration,
    it MUST generate an error".
    """
    if mount_label:
        if not selinux_enabled():
            raise ConfigError(f"linux.mountLabel is {mount_label!r}, but SELinux is not enabled on this host")
        raise ConfigError(f"linux.mountLabel is {mount_label!r}: ocirt does not label mounts with SELinux "
                          "contexts")
    if apparmor_profile and not apparmor_enabled():
        raise ConfigError(f"process.apparmorProfile is {apparmor_profile!r}, but AppArmor is not enabled "
                          "on this host")
    if selinux_label and not selinux_enabled():
        raise ConfigError(f"process.selinuxLabel is {selinux_label!r}, but SELinux is not enabled on "
                          "this host")


def apply_apparmor(profile: str | None) -> None:
    """Make the next ``execve`` enter AppArmor ``profile`` (what libapparmor's aa_change_onexec does)."""
    if not profile:
        return
    if not apparmor_enabled():
        raise OcirtError(f"cannot apply AppArmor profile {profile!r}: AppArmor is not enabled on this host")
    data = f"exec {profile}"
    try:
        # With LSM stacking AppArmor has its own directory; the shared attr/exec is the older interface.
        fd = procfs.open_proc_file("thread-self/attr/apparmor/exec", os.O_WRONLY)
    except procfs.ProcfsError:
        fd = procfs.open_proc_file("thread-self/attr/exec", os.O_WRONLY)
    # AppArmor answers ENOENT for a profile it has not loaded.
    _write_attr(fd, data, f"cannot apply AppArmor profile {profile!r}", enoent="profile not loaded")


def apply_selinux_label(label: str | None) -> None:
    """Make the next ``execve`` run with SELinux context ``label``."""
    if not label:
        return
    if not selinux_enabled():
        raise OcirtError(f"cannot apply SELinux label {label!r}: SELinux is not enabled on this host")
    fd = procfs.open_proc_file("thread-self/attr/exec", os.O_WRONLY)
    _write_attr(fd, label, f"cannot apply SELinux label {label!r}")


def set_selinux_keycreate_label(label: str | None) -> None:
    """Label the keys this process creates from now on (runc does this before a new session keyring)."""
    if not label or not selinux_enabled():
        return
    fd = procfs.open_proc_file("thread-self/attr/keycreate", os.O_WRONLY)
    _write_attr(fd, label, f"cannot set SELinux key label {label!r}")


def _write_attr(fd: int, data: str, failure: str, enoent: str | None = None) -> None:
    payload = data.encode()
    try:
        written = os.write(fd, payload)
    except OSError as err:
        reason = why(err)
        if enoent and err.errno == errno.ENOENT:
            reason = enoent
        raise OcirtError(f"{failure}: {reason}") from None
    finally:
        os.close(fd)
    if written != len(payload):
        raise OcirtError(f"{failure}: short write")
