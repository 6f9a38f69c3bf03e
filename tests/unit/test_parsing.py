"""What the command line's small values parse to: container ids, signals, --user, durations, integers,
sizes and `update --resources`. Pure functions: no root, no container, no kernel."""

from __future__ import annotations

import pytest

from ocirt.container import parse_signal
from ocirt.control import parse_duration, parse_integer, parse_resources, ram_in_bytes
from ocirt.errors import OcirtError
from ocirt.execute import parse_user
from ocirt.state import validate_id

# ---- container ids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("container_id", ["a", "web-1", "A_b+c.d", "x" * 1024, "..."])
def test_ids_of_the_allowed_characters_are_accepted(container_id):
    validate_id(container_id)


@pytest.mark.parametrize("container_id", ["", ".", "..", "a/b", "a b", "é", "x" * 1025, "a\0b", "a\n"])
def test_other_ids_are_refused_with_one_line(container_id):
    with pytest.raises(OcirtError) as caught:
        validate_id(container_id)
    assert "\n" not in str(caught.value).replace("\\n", "")


# ---- signals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "number"), [
    ("9", 9), ("KILL", 9), ("SIGKILL", 9), ("sigterm", 15), ("term", 15), ("HUP", 1), ("64", 64),
    ("POLL", 29), ("IO", 29), ("RTMIN", 34), ("RTMIN+3", 37), ("SIGRTMAX", 64), ("RTMAX-2", 62),
])
def test_signals_by_number_and_by_name(text, number):
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["0", "65", "-1", "", "SIG", "NOSUCH", "RTMIN+31", "RTMAX+1", "RTMINx", "٩"])
def test_what_is_no_signal_is_refused(text):
    with pytest.raises(OcirtError, match="signal"):
        parse_signal(text)


# ---- exec --user ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ids"), [
    ("0", (0, None)), ("1000:1000", (1000, 1000)), ("5:0", (5, 0)), ("4294967294:4294967294", (4294967294,) * 2),
])
def test_user_is_numeric_uid_and_optional_gid(text, ids):
    assert parse_user(text) == ids


@pytest.mark.parametrize("text", ["", "root", "1000:", ":1000", "1:2:3", "-1", "²", "4294967295", "1:4294967295",
                                  "1" * 65])
def test_other_users_are_refused(text):
    with pytest.raises(OcirtError, match="--user"):
        parse_user(text)


# ---- durations (Go's time.ParseDuration) --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("5s", 5.0), ("250ms", 0.25), ("1m30s", 90.0), ("1.5h", 5400.0), ("-2s", -2.0), ("100us", 1e-4),
    ("100µs", 1e-4), ("7ns", 7e-9), ("+3s", 3.0),
])
def test_durations_in_seconds(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "5x", "1.2.3s", "-", "5 s"])
def test_what_is_no_duration_is_refused(text):
    with pytest.raises(OcirtError, match="duration"):
        parse_duration(text)


# ---- integers and sizes of `update` flags -------------------------------------------------------------------


def test_integers_signed_and_unsigned():
    assert parse_integer("-5", "--cpu-quota", unsigned=False) == -5
    assert parse_integer("42", "--pids-limit", unsigned=True) == 42
    with pytest.raises(OcirtError, match="--cpu-shares.*cannot be negative"):
        parse_integer("-1", "--cpu-shares", unsigned=True)
    with pytest.raises(OcirtError, match="--cpu-shares.*not an integer"):
        parse_integer("1e3", "--cpu-shares", unsigned=True)


@pytest.mark.parametrize(("text", "size"), [
    ("-1", -1), ("4096", 4096), ("512k", 512 << 10), ("32m", 32 << 20), ("1g", 1 << 30), ("2GiB", 2 << 30),
    ("1.5m", 3 << 19), ("3 kb", 3 << 10),
])
def test_sizes_are_dockers_ram_in_bytes(text, size):
    assert ram_in_bytes(text, "--memory") == size


@pytest.mark.parametrize("text", ["", "m", "1x", "-2", "1..5m"])
def test_what_is_no_size_is_refused(text):
    with pytest.raises(OcirtError, match="--memory"):
        ram_in_bytes(text, "--memory")


# ---- update --resources -------------------------------------------------------------------------------------


def test_resources_keep_only_what_update_applies():
    parsed = parse_resources(b'{"memory": {"limit": 1048576, "swap": 0}, "cpu": {"shares": 0, "burst": 0,'
                             b' "cpus": "0"}, "pids": {"limit": -1}, "unified": {"pids.max": "5"},'
                             b' "devices": [{"allow": false}], "hugepageLimits": [{"pageSize": "2MB"}]}', "-")
    assert parsed == {"memory": {"limit": 1048576}, "cpu": {"burst": 0, "cpus": "0"}, "pids": {"limit": -1},
                      "unified": {"pids.max": "5"}, "devices": [{"allow": False}]}


@pytest.mark.parametrize(("text", "says"), [
    ("{", "malformed JSON"), ("[]", "must be a JSON object"), ('{"cpu": 1}', "cpu must be an object"),
    ('{"cpu": {"shares": true}}', "cpu.shares must be an integer"),
    ('{"cpu": {"shares": -1}}', "cpu.shares cannot be negative"), ('{"cpu": {"cpus": 1}}', "must be a string"),
    ('{"unified": {"a": 1}}', "unified must map"), ('{"devices": [{}]}', "devices must be a list of rules"),
])
def test_bad_resources_name_their_field(text, says):
    with pytest.raises(OcirtError, match=says) as caught:
        parse_resources(text, "resources.json")
    assert str(caught.value).startswith("resources.json: ")
