"""ocirt.linux.lsm. This machine's kernel has neither AppArmor nor SELinux, so what can be shown honestly
is the behaviour without them: detection says no, a config that asks for a label is refused with a clear
message, an empty one asks for nothing, and a write the kernel refuses is reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ocirt.errors import ConfigError, OcirtError
from ocirt.linux import lsm, procfs

from .forked import run_forked

APPARMOR_IN_KERNEL = Path("/sys/module/apparmor").exists()
SELINUX_IN_KERNEL = "selinuxfs" in Path("/proc/filesystems").read_text()

needs_no_apparmor = pytest.mark.skipif(APPARMOR_IN_KERNEL, reason="this host's kernel has AppArmor")
needs_no_selinux = pytest.mark.skipif(SELINUX_IN_KERNEL, reason="this host's kernel has SELinux")


@needs_no_apparmor
def test_apparmor_is_not_detected_on_a_kernel_without_it():
    assert lsm.apparmor_enabled() is False


@needs_no_selinux
def test_selinux_is_not_detected_on_a_kernel_without_it():
    assert lsm.selinux_enabled() is False


@needs_no_apparmor
def test_apparmor_profile_is_refused_before_the_fork():
    with pytest.raises(ConfigError) as caught:
        lsm.check_host_support("ocirt-test-profile", None)
    assert str(caught.value) == ("process.apparmorProfile is 'ocirt-test-profile', but AppArmor is not "
                                 "enabled on this host")


@needs_no_selinux
def test_selinux_label_is_refused_before_the_fork():
    label = "system_u:system_r:container_t:s0:c1,c2"
    with pytest.raises(ConfigError) as caught:
        lsm.check_host_support(None, label)
    assert str(caught.value) == f"process.selinuxLabel is {label!r}, but SELinux is not enabled on this host"


@needs_no_apparmor
@needs_no_selinux
def test_the_init_refuses_too_and_writes_nothing():
    def child():
        messages = []
        for apply, value in ((lsm.apply_apparmor, "ocirt-test-profile"),
                             (lsm.apply_selinux_label, "system_u:system_r:container_t:s0")):
            try:
                apply(value)
            except OcirtError as err:
                messages.append(str(err))
        return {"messages": messages, "opened_proc": procfs._private_proc_owner == os.getpid()}

    result = run_forked(child).ok()
    assert result["messages"] == [
        "cannot apply AppArmor profile 'ocirt-test-profile': AppArmor is not enabled on this host",
        "cannot apply SELinux label 'system_u:system_r:container_t:s0': SELinux is not enabled on this host",
    ]
    assert result["opened_proc"] is False  # refused before even opening procfs


def test_empty_values_ask_for_nothing():
    def child():
        lsm.check_host_support(None, None)
        lsm.check_host_support("", "")
        for value in (None, ""):
            lsm.apply_apparmor(value)
            lsm.apply_selinux_label(value)
            lsm.set_selinux_keycreate_label(value)
        return procfs._private_proc_owner == os.getpid()

    assert run_forked(child).ok() is False  # procfs was not even opened


@pytest.mark.skipif(os.geteuid() != 0, reason="a private procfs instance needs CAP_SYS_ADMIN")
@needs_no_apparmor
@needs_no_selinux
def test_a_refused_attr_write_is_reported():
    def child():
        fd = procfs.open_proc_file("thread-self/attr/exec", os.O_WRONLY)
        try:
            lsm._write_attr(fd, "exec ocirt-test-profile", "cannot apply AppArmor profile 'ocirt-test-profile'",
                            enoent="profile not loaded")
        except OcirtError as err:
            return {"error": str(err), "fd_closed": not os.path.exists(f"/proc/self/fd/{fd}")}
        return None

    result = run_forked(child).ok()
    # Without an LSM behind attr/exec the kernel answers EINVAL, as runc reports on this host.
    assert result == {"error": "cannot apply AppArmor profile 'ocirt-test-profile': invalid argument",
                      "fd_closed": True}
