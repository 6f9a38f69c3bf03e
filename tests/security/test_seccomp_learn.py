"""Seccomp profiles learned from a run (issue 19, part 2), rootful and as an unprivileged user.

A learning run records every syscall the container's processes make through a seccomp user-notification
listener; the profile it writes denies everything else. Run again with that profile the same program
works; a program that needs one syscall more gets the profile's errno. Learning again merges, keeping
the user's own rules. Runs are real containers on the real kernel: the listener, the CONTINUE answers
and the denials are the kernel's.
"""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import pytest

from ocirt.seccomp_profile import runtime_needs
from security import assert_clear_error, assert_nothing_left, own_rootfs_bundle

# Busybox's ash forks and execs ls (not a no-fork applet), so the profile must follow a child.
LEARNED = "echo one; ls / >/dev/null; echo two"
# The same, and then a mkdir, which nothing in LEARNED calls.
NEEDS_MKDIR = LEARNED + "; mkdir /tmp/made; echo status=$?"


@pytest.fixture(params=["rootful", pytest.param("rootless", marks=pytest.mark.rootless)])
def user(request):
    return request.getfixturevalue("unprivileged_user") if request.param == "rootless" else None


def bundle_for(make_bundle, user, script: str) -> helpers.Bundle:
    bundle = make_bundle(user=user, args=["sh", "-c", script])
    bundle.config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["mode=1777"]})
    return bundle


def learn(bundle: helpers.Bundle, profile: Path, *extra: str):
    result = bundle.run("--seccomp-learn", str(profile), *extra)
    assert_nothing_left(bundle)
    return result


def enforce(bundle: helpers.Bundle, profile: Path):
    bundle.config["linux"]["seccomp"] = json.loads(profile.read_text())
    result = bundle.run()
    assert_nothing_left(bundle)
    return result


def allowed(profile: Path) -> set[str]:
    data = json.loads(profile.read_text())
    return {name for rule in data["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" for name in rule["names"]}


def test_a_learned_profile_runs_its_program_and_denies_what_it_never_saw(make_bundle, user):
    bundle = bundle_for(make_bundle, user, LEARNED)
    profile = bundle.path / "profile.json"
    learned = learn(bundle, profile)
    assert learned.returncode == 0, learned.stderr
    assert learned.stdout == "one\ntwo\n"
    assert f"seccomp-learn: {profile}: " in learned.stderr, learned.stderr

    data = json.loads(profile.read_text())
    assert data["defaultAction"] == "SCMP_ACT_ERRNO" and data["defaultErrnoRet"] == 1
    assert data["architectures"] == ["SCMP_ARCH_X86_64"]
    names = allowed(profile)
    # The child's fork, exec and wait, and the runtime's own set between filter and execve.
    assert {"clone", "execve", "wait4", "write", "exit_group"} <= names, names
    assert set(runtime_needs()) <= names
    assert "mkdir" not in names and "mkdirat" not in names

    again = enforce(bundle, profile)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "one\ntwo\n"

    other = bundle_for(make_bundle, user, NEEDS_MKDIR)
    denied = enforce(other, profile)
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout == "one\ntwo\nstatus=1\n", denied.stdout
    assert "mkdir: can't create directory '/tmp/made': Operation not permitted" in denied.stderr


def test_without_a_profile_the_mkdir_program_works(make_bundle, user):
    """The control for the denial above: the program succeeds when nothing filters it."""
    bundle = bundle_for(make_bundle, user, NEEDS_MKDIR)
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "one\ntwo\nstatus=0\n"
    assert_nothing_left(bundle)


def test_the_chosen_errno_is_what_denied_calls_get(make_bundle, user):
    bundle = bundle_for(make_bundle, user, LEARNED)
    profile = bundle.path / "profile.json"
    assert learn(bundle, profile, "--seccomp-learn-errno", "ENOSYS").returncode == 0
    assert json.loads(profile.read_text())["defaultErrnoRet"] == 38
    other = bundle_for(make_bundle, user, NEEDS_MKDIR)
    denied = enforce(other, profile)
    assert "mkdir: can't create directory '/tmp/made': Function not implemented" in denied.stderr, denied.stderr


def test_learning_again_merges_and_keeps_the_users_rules(make_bundle, user):
    first = bundle_for(make_bundle, user, LEARNED)
    profile = first.path / "profile.json"
    assert learn(first, profile).returncode == 0
    before = allowed(profile)

    # Hand edits: a key of the user's own, a rule denying ptrace, a rule that narrows personality.
    data = json.loads(profile.read_text())
    data["comment"] = "reviewed by hand"
    data["syscalls"].append({"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13})
    data["syscalls"].append({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]})
    profile.write_text(json.dumps(data))

    second = bundle_for(make_bundle, user, NEEDS_MKDIR)
    result = learn(second, profile)
    assert result.returncode == 0, result.stderr
    assert "status=0" in result.stdout
    merged = json.loads(profile.read_text())
    assert merged["comment"] == "reviewed by hand"
    assert {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13} in merged["syscalls"]
    assert merged["syscalls"][-1]["names"] == ["personality"]
    after = allowed(profile)
    assert before < after and after - before & {"mkdir", "mkdirat"}, after - before

    assert enforce(bundle_for(make_bundle, user, NEEDS_MKDIR), profile).stdout.endswith("status=0\n")


def test_a_syscall_the_user_denies_by_hand_stays_denied(make_bundle, user):
    bundle = bundle_for(make_bundle, user, NEEDS_MKDIR)
    profile = bundle.path / "profile.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}))
    result = learn(bundle, profile)
    assert result.returncode == 0, result.stderr
    assert "observed but denied by a rule of the profile, left so: mkdir" in result.stderr, result.stderr
    assert not allowed(profile) & {"mkdir", "mkdirat"}
    assert enforce(bundle_for(make_bundle, user, NEEDS_MKDIR), profile).stdout.endswith("status=1\n")


def test_create_start_delete_learns_too(make_bundle, user, test_dir):
    bundle = bundle_for(make_bundle, user, LEARNED)
    profile = bundle.path / "profile.json"
    out = test_dir / f"{bundle.id}.out"
    created = bundle.create("--seccomp-learn", str(profile), stdout=out)
    assert created.returncode == 0, created.stderr
    assert bundle.start().returncode == 0
    helpers.wait_for(lambda: bundle.state()["status"] == "stopped", timeout=10)
    deleted = bundle.delete()
    assert deleted.returncode == 0, deleted.stderr
    assert out.read_text() == "one\ntwo\n"
    assert {"clone", "execve", "wait4"} <= allowed(profile)
    assert_nothing_left(bundle)


def test_a_missing_program_writes_no_profile(make_bundle, user):
    """The lookup fails before the filter is loaded: the run fails as without learning."""
    bundle = make_bundle(user=user, args=["/no/such/program"])
    profile = bundle.path / "profile.json"
    result = learn(bundle, profile)
    assert_clear_error(result, 'exec: "/no/such/program"', "no such file or directory")
    assert not profile.exists()


def test_a_program_whose_execve_fails_writes_no_profile(make_bundle, user):
    """execve itself fails (ENOEXEC) once the filter is in: the recorder sees the init's execve but
    not a program, and says so."""
    bundle = own_rootfs_bundle(make_bundle, user, args=["/not-a-program"])
    (bundle.rootfs / "not-a-program").write_bytes(b"\x7fELF garbage")
    (bundle.rootfs / "not-a-program").chmod(0o755)
    profile = bundle.path / "profile.json"
    result = learn(bundle, profile)
    assert result.returncode == 126, result.stderr
    assert "exec format error" in result.stderr, result.stderr
    assert "not written: the container's program never ran" in result.stderr, result.stderr
    assert not profile.exists()


@pytest.fixture(params=["rootful", pytest.param("rootless-subids", marks=pytest.mark.rootless)])
def switching_user(request):
    """Who runs a container whose process switches to uid 1000 with a supplementary group: root, or a
    user with subordinate ids (a single-id user namespace has no other user to switch to)."""
    return request.getfixturevalue("subid_user") if request.param == "rootless-subids" else None


def test_the_runtimes_calls_after_the_filter_are_runcs(make_bundle, switching_user):
    """Everything the init calls between loading the (learning) filter and execve is in the list the
    learned profile adds for the runtime: the runtime needs no more than runc's set."""
    bundle = make_bundle(user=switching_user, args=["true"])
    if switching_user is not None:
        helpers.use_subid_maps(bundle.config, switching_user)
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [100]}
    bundle.config["process"]["noNewPrivileges"] = False
    result = bundle.run("--seccomp-learn", str(bundle.path / "p.json"), global_args=["--debug"])
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stderr.splitlines() if "the runtime's after loading the filter" in line)
    called = set(line.split("filter: ", 1)[1].rstrip('"').split())
    assert {"setuid", "capset", "execve"} <= called, called  # the user switch and execve were seen
    assert called <= set(runtime_needs()), called - set(runtime_needs())
    assert_nothing_left(bundle)


@pytest.mark.parametrize("extra, message", [
    (["--seccomp-learn-errno", "EBOGUS"], "unknown errno 'EBOGUS'"),
    (["--seccomp-learn-errno", "0"], "is not an errno in 1..4095"),
])
def test_bad_learning_options_are_refused(make_bundle, user, extra, message):
    bundle = make_bundle(user=user, args=["true"])
    result = learn(bundle, bundle.path / "p.json", *extra)
    assert_clear_error(result, message)
    assert not (bundle.path / "p.json").exists()


def test_an_errno_without_a_profile_is_refused(make_bundle, user):
    bundle = make_bundle(user=user, args=["true"])
    result = bundle.run("--seccomp-learn-errno", "EPERM")
    assert_clear_error(result, "--seccomp-learn-errno needs --seccomp-learn PROFILE")
    assert_nothing_left(bundle)


def test_a_profile_that_cannot_be_written_is_refused_before_anything_runs(make_bundle, user):
    bundle = make_bundle(user=user, args=["true"])
    result = learn(bundle, bundle.path / "missing-dir" / "p.json")
    assert_clear_error(result, "--seccomp-learn: cannot write", "no such file or directory")


def test_a_profile_that_is_not_one_is_refused_before_anything_runs(make_bundle, user):
    bundle = make_bundle(user=user, args=["true"])
    profile = bundle.path / "p.json"
    profile.write_text('{"not": "a profile"}')
    result = learn(bundle, profile)
    assert_clear_error(result, "not a seccomp profile")
    assert profile.read_text() == '{"not": "a profile"}'


def test_learning_replaces_the_configs_own_profile_and_says_so(make_bundle, user):
    bundle = bundle_for(make_bundle, user, NEEDS_MKDIR)
    bundle.config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    result = learn(bundle, bundle.path / "p.json")
    assert result.returncode == 0, result.stderr
    assert "the config's linux.seccomp is not loaded in this run" in result.stderr
    assert result.stdout.endswith("status=0\n")


@pytest.mark.parametrize("with_pyseccomp", [True, False], ids=["pyseccomp", "no-binding"])
def test_learning_under_a_pip_install(make_bundle, user, harness, with_pyseccomp):
    """The numbers become names through pyseccomp when Debian's binding is missing (ocirt.deps); with
    no binding at all learning is refused before the container is made."""
    from integration.test_seccomp_binding import pip_launcher

    bundle = bundle_for(make_bundle, user, LEARNED)
    launcher = pip_launcher(harness.dir, Path(bundle.runtime_path).resolve().parents[1],
                            with_pyseccomp=with_pyseccomp)
    profile = bundle.path / "profile.json"
    result = bundle.run("--seccomp-learn", str(profile), runtime=launcher)
    assert_nothing_left(bundle)
    if not with_pyseccomp:
        assert_clear_error(result, "needs seccomp", "python3-seccomp", "ocirt[seccomp]")
        assert not profile.exists()
        return
    assert result.returncode == 0, result.stderr
    assert {"clone", "execve", "wait4"} <= allowed(profile)
    assert enforce(bundle_for(make_bundle, user, LEARNED), profile).stdout == "one\ntwo\n"


def recorder_of(bundle: helpers.Bundle) -> int:
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and (entry / "comm").read_text().strip() == "ocirt-recorder"
                    and bundle.id in (entry / "cmdline").read_text()):
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no recorder for {bundle.id}")


def test_a_recorder_that_dies_leaves_the_container_failing_not_hanging(make_bundle, user, test_dir):
    """Without the listener the kernel fails the notified calls with ENOSYS: the container's program
    ends, delete works, and no profile is written."""
    import os
    import signal

    bundle = make_bundle(user=user, args=["sh", "-c", "sleep 1; echo after"])
    profile = bundle.path / "profile.json"
    created = bundle.create("--seccomp-learn", str(profile), stdout=test_dir / "out")
    assert created.returncode == 0, created.stderr
    assert bundle.start().returncode == 0
    os.kill(recorder_of(bundle), signal.SIGKILL)
    assert helpers.wait_for(lambda: bundle.state()["status"] == "stopped", timeout=10)
    deleted = bundle.delete()
    assert deleted.returncode == 0, deleted.stderr
    assert "after" not in (test_dir / "out").read_text()
    assert not profile.exists()
    assert_nothing_left(bundle)


def test_a_slow_recorder_makes_the_container_wait_not_fail(make_bundle, user, test_dir):
    """While the recorder is stopped the container's calls wait in the kernel; once it runs again they
    go on, and the profile is complete."""
    import os
    import signal
    import time

    bundle = make_bundle(user=user, args=["sh", "-c", "sleep 0.5; echo after"])
    profile = bundle.path / "profile.json"
    out = test_dir / "out"
    assert bundle.create("--seccomp-learn", str(profile), stdout=out).returncode == 0
    recorder = recorder_of(bundle)
    assert bundle.start().returncode == 0
    os.kill(recorder, signal.SIGSTOP)
    try:
        time.sleep(1.5)
        running = bundle.state()["status"]
        written = out.read_text()
    finally:
        os.kill(recorder, signal.SIGCONT)
    assert running == "running" and written == ""
    assert helpers.wait_for(lambda: bundle.state()["status"] == "stopped", timeout=10)
    assert bundle.delete().returncode == 0
    assert out.read_text() == "after\n"
    assert {"execve", "wait4", "write"} <= allowed(profile)
    assert_nothing_left(bundle)
