"""ocirt.log: runc's (logrus's) line formats, the --debug trace, and its cost when off (nothing built)."""

from __future__ import annotations

import json
import re

import pytest

from ocirt import log, logline


@pytest.fixture(autouse=True)
def fresh_config():
    saved = dict(vars(log.config))
    yield
    for key in list(vars(log.config)):
        delattr(log.config, key)
    for key, value in saved.items():
        setattr(log.config, key, value)


class Exploding:
    """Formatting it fails the test: a trace point that is off must never format its arguments."""

    def __str__(self):
        raise AssertionError("formatted while tracing is off")

    __repr__ = __str__


def test_a_trace_point_that_is_off_builds_nothing(capsys):
    log.configure(None, "text", debug=False)
    called = []
    log.trace("mounts", "made %s of %s", Exploding(), lambda: called.append(1))
    assert called == []
    assert capsys.readouterr() == ("", "")


def test_configure_creates_the_log_file(tmp_path):
    path = tmp_path / "runtime.log"
    log.configure(str(path), "json", debug=False)
    assert path.exists() and path.read_text() == ""


def test_trace_lines_in_json_have_runcs_keys_sorted_and_the_timing(tmp_path):
    path = tmp_path / "trace.json"
    log.configure(str(path), "json", debug=True)
    log.trace("cgroups", "created %s", lambda: "/sys/fs/cgroup/x")
    log.trace("exit", "status %d", 0)
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert list(first) == ["level", "ms", "msg", "step", "time", "total_ms"]
    assert first["msg"] == "cgroups: created /sys/fs/cgroup/x" and first["step"] == "cgroups"
    assert first["level"] == "debug"
    assert second["total_ms"] >= first["total_ms"] and second["ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d)", first["time"])


def test_trace_without_a_log_goes_to_stderr_as_logrus_text(capsys):
    log.configure(None, "text", debug=True)
    log.trace("hooks", 'prestart hook #0 (/bin/sh "x"): exit status %d', 0)
    err = capsys.readouterr().err
    assert re.fullmatch(r'time="[^"]+" level=debug msg="hooks: prestart hook #0 \(/bin/sh \\"x\\"\): exit '
                        r'status 0" ms=[0-9.]+ step=hooks total_ms=[0-9.]+\n', err), err


def test_logrus_quotes_only_what_needs_it():
    assert logline.quote("cgroups") == "cgroups"
    assert logline.quote("/a/b-c_d.e@f^g+h") == "/a/b-c_d.e@f^g+h"
    assert logline.quote("two words") == '"two words"'
    assert logline.quote("") == '""'
    assert logline.quote('say "hi"\n') == '"say \\"hi\\"\\n"'


def test_a_child_relays_its_lines_and_the_runtime_logs_them(tmp_path):
    """The init cannot reach --log after pivot_root: its lines go over its channel to the runtime."""
    path = tmp_path / "relayed.json"
    log.configure(str(path), "json", debug=True)
    sent = []
    log.relay_to(lambda kind, payload: sent.append((kind, payload)))
    log.trace("mounts", "root entered")
    log.debug("seccomp: rule %d skipped", 3)
    assert sent == [("trace", "mounts root entered"), ("log", "debug seccomp: rule 3 skipped")]
    assert not path.read_text()

    log.relay_to(None)
    for kind, payload in sent:
        log.relayed(kind, payload)
    relayed = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["level"], e["msg"]) for e in relayed] == [("debug", "mounts: root entered"),
                                                         ("debug", "seccomp: rule 3 skipped")]
    assert "step" in relayed[0] and "step" not in relayed[1]


def test_a_closed_channel_drops_trace_lines(capsys):
    log.configure(None, "text", debug=True)

    def closed(kind, payload):
        raise OSError(9, "Bad file descriptor")

    log.relay_to(closed)
    log.trace("fifo", "after the ready handshake")
    assert capsys.readouterr() == ("", "")  # never the container's stderr
