"""Hostile user databases and absurd ``exec -u`` strings: an image with a huge /etc/passwd (or group)
and user strings like "0:0:0", ten thousand digits, "-1" or names. A runtime that parses the image's
files naively (whole-file reads, quadratic lookups) or the string loosely can be made slow, use
unbounded memory, or run the process as a uid nobody asked for. Every attempt here must finish within
2 s, and the result must be the exact uid:gid or a clear error."""

from __future__ import annotations

import json
import time

import pytest

from security import assert_clear_error, assert_nothing_left, own_rootfs_bundle

HUGE_LINES = 200_000
LIMIT_SECONDS = 2.0

# (the -u value, the "uid gid" the process must report, or None for a refusal)
USER_STRINGS = [
    ("0", "0 0"),
    ("1000", "1000 0"),
    ("1000:1000", "1000 1000"),
    ("4294967294:4294967294", "4294967294 4294967294"),
    ("0:0:0", None),
    ("9" * 10_000, None),
    ("1" + "0" * 9_999, None),
    ("-1", None),
    ("4294967295", None),
    ("root", None),
    ("root:root", None),
    ("0x10", None),
    (" 1", None),
    ("1 ", None),
    ("١", None),  # an Arabic-Indic digit: isdigit() says yes, a uid it is not
    ("1:", None),
    (":1", None),
    ("", "0 0"),  # empty is no -u at all (as in runc): the container's own user
    ("1:-1", None),
    ("+1", None),
]


def hostile_rootfs(bundle) -> None:
    etc = bundle.rootfs / "etc"
    with open(etc / "passwd", "a") as f:
        f.writelines(f"u{n}:x:{n % 65536}:{n % 65536}:{'x' * 20}:/home/u{n}:/bin/sh\n" for n in range(HUGE_LINES))
        f.write("long:" + "y" * 1_000_000 + "\n")
    with open(etc / "group", "a") as f:
        f.writelines(f"g{n}:x:{n % 65536}:" + ",".join(f"u{m}" for m in range(n, n + 20)) + "\n"
                     for n in range(HUGE_LINES // 4))


@pytest.fixture
def hostile_container(make_bundle):
    bundle = own_rootfs_bundle(make_bundle, None, args=["sleep", "600"])
    hostile_rootfs(bundle)
    bundle.config["process"]["user"] = {"uid": 0, "gid": 0, "additionalGids": [1, 2, 3]}
    started = time.monotonic()
    result = bundle.run("-d")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < LIMIT_SECONDS, "starting with a huge /etc/passwd is slow"
    yield bundle
    bundle.delete(force=True)
    assert_nothing_left(bundle)


def test_exec_user_strings_are_exact_or_refused(hostile_container):
    bundle = hostile_container
    for text, expected in USER_STRINGS:
        started = time.monotonic()
        result = bundle.runtime(["exec", "-u", text, bundle.id, "sh", "-c", 'echo "$(id -u) $(id -g)"'])
        elapsed = time.monotonic() - started
        assert elapsed < LIMIT_SECONDS, f"exec -u {text[:20]!r}: {elapsed:.2f} s"
        if expected is None:
            assert result.returncode != 0, f"exec -u {text[:20]!r} was accepted: {result.stdout!r}"
            assert_clear_error(result)
            assert len(result.stderr) < 500, f"exec -u {text[:20]!r}: the error repeats the input at length"
        else:
            assert result.returncode == 0, (text, result.stderr)
            assert result.stdout == expected + "\n", (text, result.stdout)


@pytest.mark.parametrize("process_user, expected", [
    ({"uid": 4294967294, "gid": 0}, "4294967294 0"),
    ({"uid": 4294967295, "gid": 0}, None),
    ({"uid": -1, "gid": 0}, None),
    ({"uid": 0, "gid": 0, "additionalGids": list(range(70000))}, None),
    ({"uid": 0, "gid": 0, "umask": 2 ** 40}, None),
    ({"uid": 1.5, "gid": 0}, None),
    ({"uid": "0", "gid": 0}, None),
])
def test_config_user_values_are_exact_or_refused(make_bundle, process_user, expected):
    bundle = own_rootfs_bundle(make_bundle, None, args=["sh", "-c", 'echo "$(id -u) $(id -g)"'])
    hostile_rootfs(bundle)
    bundle.config["process"]["user"] = process_user
    started = time.monotonic()
    result = bundle.run()
    assert time.monotonic() - started < LIMIT_SECONDS + 1
    if expected is None:
        assert_clear_error(result)
        assert len(result.stderr) < 2000, "the error repeats the input at length"
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected + "\n"
    assert_nothing_left(bundle)


def test_rootless_exec_user_outside_the_map_is_refused(make_bundle, unprivileged_user):
    bundle = own_rootfs_bundle(make_bundle, unprivileged_user, args=["sleep", "600"])
    hostile_rootfs(bundle)
    assert bundle.run("-d").returncode == 0
    try:
        for text, expected in (("0", "0 0"), ("1000", None), ("0:1000", None), ("9" * 10_000, None)):
            started = time.monotonic()
            result = bundle.runtime(["exec", "-u", text, bundle.id, "sh", "-c", 'echo "$(id -u) $(id -g)"'])
            assert time.monotonic() - started < LIMIT_SECONDS
            if expected is None:
                assert_clear_error(result)
            else:
                assert result.returncode == 0 and result.stdout == expected + "\n", result.stderr
    finally:
        bundle.delete(force=True)
    assert_nothing_left(bundle)


@pytest.mark.parametrize("process_user", [{"uid": 4294967295, "gid": 0}, {"uid": 0, "gid": 4294967295},
                                          {"uid": 0, "gid": 0, "additionalGids": [4294967295]}])
def test_exec_process_file_with_the_unchanged_id_is_refused(hostile_container, process_user):
    """(uid_t)-1 tells setresuid to change nothing: taken as is, the process would stay root."""
    bundle = hostile_container
    process_file = bundle.path / "process.json"
    process_file.write_text(json.dumps({"args": ["id", "-u"], "cwd": "/", "user": process_user,
                                        "env": ["PATH=/bin"]}))
    result = bundle.runtime(["exec", "--process", process_file, bundle.id])
    assert result.returncode != 0, f"accepted, ran as {result.stdout!r}"
    assert_clear_error(result, "4294967295" if "additionalGids" not in process_user else "additionalGids")
