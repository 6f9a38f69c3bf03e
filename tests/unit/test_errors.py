"""Errors with fields (ocirt/errors.py) and the init's structured report of them over a real pipe pair
(ocirt/linux/initproc.py report, ocirt/linux/init.py init_error). No root needed."""

from __future__ import annotations

import errno
import os

import pytest

from ocirt.errors import ConfigError, HookError, InitError, OcirtError, annotated
from ocirt.linux.init import Channel
from ocirt.linux.initproc import report


def test_from_os_says_what_failed_and_keeps_the_fields() -> None:
    err = OcirtError.from_os(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), "open")
    assert str(err) == "open /x: no such file or directory"
    assert err.fields() == {"op": "open", "path": "/x", "errno": errno.ENOENT}
    err = OcirtError.from_os(PermissionError(errno.EACCES, "Permission denied"), "chdir", "/w",
                             what="cannot change to cwd /w", hint="make /w searchable")
    assert str(err) == "cannot change to cwd /w: permission denied; make /w searchable"
    assert err.fields()["hint"] == "make /w searchable"


def test_an_error_raised_while_handling_an_oserror_has_its_errno() -> None:
    try:
        try:
            os.stat("/nonexistent/ocirt-unit")
        except OSError:
            raise OcirtError("stat failed") from None
    except OcirtError as err:
        assert err.fields() == {"errno": errno.ENOENT}
    assert OcirtError("plain").fields() == {}


def test_annotated_fills_in_what_the_error_does_not_name() -> None:
    with pytest.raises(OcirtError) as raised, annotated("mount", "/mnt", hint=lambda n: "try a bind" if n == 1
                                                        else None):
        raise OcirtError("mount x on /mnt: operation not permitted", errno=errno.EPERM)
    assert raised.value.fields() == {"op": "mount", "path": "/mnt", "errno": 1, "hint": "try a bind"}
    assert str(raised.value).endswith("; try a bind")
    with pytest.raises(OcirtError) as raised, annotated("mount", "/mnt"):
        raise OcirtError("mknod /dev/x: exists", op="mknod", path="/dev/x")
    assert (raised.value.op, raised.value.path) == ("mknod", "/dev/x")


def round_trip(err: OcirtError) -> OcirtError:
    runtime, child = Channel.pair()
    try:
        report(child, err)
        with pytest.raises(OcirtError) as raised:
            runtime.expect("ready")
        return raised.value
    finally:
        runtime.close()
        child.close()


def test_the_init_reports_its_error_as_a_structured_message() -> None:
    sent = ConfigError("mount tmpfs on /t: invalid argument", exit_code=3, op="mount", path="/t",
                       errno=errno.EINVAL, hint="check the options")
    got = round_trip(sent)
    assert str(got) == str(sent) == "mount tmpfs on /t: invalid argument; check the options"
    assert type(got) is ConfigError and got.exit_code == 3
    assert got.fields() == sent.fields()


def test_the_runtime_raises_the_init_s_class_where_it_means_something_to_a_caller() -> None:
    class RootfsError(OcirtError):
        pass

    got = round_trip(HookError("createContainer hook /h failed: exit status 2"))
    assert type(got) is HookError and str(got) == "createContainer hook /h failed: exit status 2"
    got = round_trip(RootfsError("mount proc on /proc: permission denied", op="mount", path="/proc",
                                 errno=errno.EPERM))
    assert type(got) is InitError and got.kind == "RootfsError"
    assert got.fields() == {"op": "mount", "path": "/proc", "errno": errno.EPERM}


def test_a_message_too_long_for_one_line_is_shortened_not_broken() -> None:
    got = round_trip(OcirtError("x" * 20000, op="mount", path="/" + "p" * 20000))
    assert isinstance(got, InitError) and got.op == "mount" and got.kind == "OcirtError"
    assert str(got).startswith("xxx") and len(str(got)) < 4000


@pytest.mark.parametrize("payload", ["1 the old text form", "{not json", '{"message": 7}', '["a"]', ""])
def test_a_payload_that_is_not_a_report_is_the_message(payload: str) -> None:
    runtime, child = Channel.pair()
    try:
        child.send("error", payload)
        with pytest.raises(InitError) as raised:
            runtime.expect("ready")
    finally:
        runtime.close()
        child.close()
    assert str(raised.value) == (payload or "the container's init failed without saying why")
    assert raised.value.fields() == {}


def test_an_error_raised_again_keeps_its_message_and_fields() -> None:
    from ocirt.errors import ContainerNotFound

    first = OcirtError("mount x on /m: operation not permitted", op="mount", path="/m", errno=1, hint="bind it")
    again = OcirtError.rebuilt(str(first) + ", and more", first.exit_code, first.fields())
    assert str(again) == "mount x on /m: operation not permitted; bind it, and more"  # the hint once
    assert again.fields() == first.fields()
    # A subclass whose __init__ takes other arguments is rebuilt all the same.
    missing = ContainerNotFound.rebuilt("container 'c' does not exist", 1, None)
    assert isinstance(missing, ContainerNotFound) and missing.fields() == {}
