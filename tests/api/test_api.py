"""`import ocirt`: sandboxes and runc's commands from a Python program, as root and as an unprivileged
user, through the one helper process of a `Runtime` (no `ocirt` process per container)."""

from __future__ import annotations

import os

import helpers


def test_a_sandbox_runs_and_its_output_and_exit_code_come_back(api):
    [cid] = api.ids(1)
    [result] = api(f"""
        sandbox = ocirt.Sandbox(["sh", "-c", "read line; echo got $line; echo oops >&2; id -u; exit 3"],
                                id={cid!r}, cgroups_path=cgroups_path({cid!r}),
                                runtime=ocirt.Runtime(ROOT))
        r = sandbox.run(stdin=b"hello\\n")
        report([r.exit_code, r.stdout.decode(), r.stderr.decode(), r.timed_out])
    """)
    assert result == [3, "got hello\n0\n", "oops\n", False]
    assert os.listdir(api.root) == []


def test_the_sandbox_has_no_network_and_a_read_only_rootfs(api):
    [cid] = api.ids(1)
    [result] = api(f"""
        script = "cat /proc/net/dev | tail -n +3 | cut -d: -f1; touch /x 2>&1; echo $?"
        r = ocirt.Sandbox(["sh", "-c", script], id={cid!r}, cgroups_path=cgroups_path({cid!r}),
                          runtime=ocirt.Runtime(ROOT)).run()
        report(r.stdout.decode().split())
    """)
    assert result[0] == "lo", result  # loopback only
    assert result[-1] == "1" and "Read-only file system" in " ".join(result), result


def test_timeout_kills_and_deletes(api):
    [cid] = api.ids(1)
    [result] = api(f"""
        runtime = ocirt.Runtime(ROOT)
        started = time.monotonic()
        r = ocirt.Sandbox(["sh", "-c", "echo begun; sleep 60 & sleep 60; echo never"], id={cid!r},
                          cgroups_path=cgroups_path({cid!r}), timeout=1, runtime=runtime).run()
        took = time.monotonic() - started
        report([r.exit_code, r.timed_out, r.stdout.decode(), took, os.listdir(ROOT)])
    """)
    exit_code, timed_out, stdout, took, left = result
    assert (exit_code, timed_out, stdout, left) == (137, True, "begun\n", []), result
    assert 1 <= took < 10, took


def test_exception_inside_the_context_manager_still_deletes(api):
    [cid] = api.ids(1)
    [result] = api(f"""
        runtime = ocirt.Runtime(ROOT)
        try:
            with ocirt.Sandbox(["sleep", "60"], id={cid!r}, cgroups_path=cgroups_path({cid!r}),
                               runtime=runtime) as sandbox:
                sandbox.start()
                pid = sandbox.pid
                assert sandbox.state()["status"] == "running"
                raise KeyError("boom")
        except KeyError:
            pass
        time.sleep(0.1)
        report([os.listdir(ROOT), os.path.exists(f"/proc/{{pid}}")])
    """)
    assert result == [[], False]


def test_fifty_sandboxes_in_a_loop_leave_nothing(api):
    ids = api.ids(50)
    [result] = api("""
        runtime = ocirt.Runtime(ROOT)
        fds_before = len(os.listdir("/proc/self/fd"))
        outputs = []
        for cid in IDS:
            r = ocirt.Sandbox(["sh", "-c", "echo $$"], id=cid, cgroups_path=cgroups_path(cid),
                              runtime=runtime).run()
            outputs.append((r.exit_code, r.stdout))
        helper = runtime._process.pid
        children = open(f"/proc/{helper}/task/{helper}/children").read().split()
        fds_after = len(os.listdir("/proc/self/fd"))
        runtime.close()
        report([sorted(set(outputs)) == [(0, b"1\\n")], fds_after - fds_before, children, os.listdir(ROOT),
                os.path.exists(f"/proc/{helper}")])
    """, ids=ids)
    assert result == [True, 0, [], [], False]
    assert helpers.find_cgroup_dirs(ids) == []


def test_a_threaded_caller_creates_sandboxes_from_many_threads(api):
    ids = api.ids(12)
    [result] = api("""
        runtime = ocirt.Runtime(ROOT)
        stop = threading.Event()
        spinner = threading.Thread(target=lambda: [0 for _ in iter(stop.is_set, True)], daemon=True)
        spinner.start()
        got, failures = {}, []
        def worker(chunk):
            try:
                for cid in chunk:
                    r = ocirt.Sandbox(["sh", "-c", f"echo {cid}"], id=cid, cgroups_path=cgroups_path(cid),
                                      runtime=runtime).run()
                    got[cid] = (r.exit_code, r.stdout.decode().strip())
            except Exception as err:
                failures.append(repr(err))
        threads = [threading.Thread(target=worker, args=(IDS[n::4],)) for n in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        stop.set()
        report([threading.active_count() > 1 or len(threads), failures, got == {c: (0, c) for c in IDS},
                os.listdir(ROOT)])
    """, ids=ids)
    assert result[1:] == [[], True, []], result


def test_runc_commands_and_the_cli_see_the_same_containers(api):
    [cid] = api.ids(1)
    # pid 1 of a pid namespace gets only the signals it handles (and SIGKILL).
    bundle = api.harness.make_bundle(args=["sh", "-c", "trap 'exit 7' TERM; sleep 60 & wait"], user=api.user,
                                     container_id=cid)
    results = api(f"""
        import subprocess, signal
        runtime = ocirt.Runtime(ROOT)
        pid = runtime.create({cid!r}, {str(bundle.path)!r})
        report(runtime.state({cid!r})["status"])
        # Another process (the CLI) is not blocked by this one.
        listed = subprocess.run([{api.runtime!r}, "--root", ROOT, "list", "-q"], capture_output=True, text=True,
                                timeout=20)
        report(listed.stdout.split())
        runtime.start({cid!r})
        report(runtime.state({cid!r})["status"])
        report(runtime.wait({cid!r}, timeout=0.2))
        runtime.kill({cid!r}, signal.SIGTERM)
        report(runtime.wait({cid!r}, timeout=10))
        report(runtime.state({cid!r})["status"])
        runtime.delete({cid!r})
        report(os.listdir(ROOT))
    """)
    assert results == ["created", [cid], "running", None, 7, "stopped", []]


def test_errors_are_ocirt_errors_with_the_cli_messages(api, runtime):
    ids = api.ids(2)
    missing, taken = ids
    bundle = api.harness.make_bundle(args=["nonexistent-program"], user=api.user, container_id=taken)
    results = api(f"""
        runtime = ocirt.Runtime(ROOT)
        def attempt(call, *args):
            try:
                call(*args)
            except errors.OcirtError as err:
                report([type(err).__name__, str(err), err.exit_code, err.fields()])
            else:
                report("no error")
        attempt(runtime.state, {missing!r})
        attempt(runtime.kill, {missing!r}, 9)
        attempt(runtime.create, {taken!r}, {str(bundle.path)!r})
        attempt(runtime.create, "bad/id", {str(bundle.path)!r})
        attempt(runtime.create, {missing!r}, "/nonexistent-bundle")
        report(os.listdir(ROOT))
    """)
    assert results[-1] == []
    expected = []
    for args in (["state", missing], ["kill", missing, "KILL"], ["create", "--bundle", str(bundle.path), taken],
                 ["create", "--bundle", str(bundle.path), "bad/id"],
                 ["create", "--bundle", "/nonexistent-bundle", missing]):
        done = runtime(args, user=api.user)
        assert done.returncode != 0
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith("ocirt: "), done.stderr
        expected.append(line[len("ocirt: "):])
    assert [r[1] for r in results[:-1]] == expected
    assert results[0][0] == results[1][0] == "ContainerNotFound"
    assert results[2][0] == "InitError"
    # The init's fields cross the helper's socket too: what failed, on which path, with which errno.
    assert results[2][3] == {"op": "execve", "path": "nonexistent-program", "errno": 2}
    assert results[0][3] == {}
    assert all(r[2] == 1 for r in results[:-1])
    assert os.listdir(api.root) == []


def test_the_helper_deletes_what_its_dead_client_left(api):
    [cid] = api.ids(1)
    [pid, helper] = api(f"""
        import signal
        runtime = ocirt.Runtime(ROOT)
        sandbox = ocirt.Sandbox(["sleep", "60"], id={cid!r}, cgroups_path=cgroups_path({cid!r}), runtime=runtime)
        sandbox.start()
        report(sandbox.pid)
        report(runtime._process.pid)
        os.kill(os.getpid(), signal.SIGKILL)
    """, killed=True)
    assert helpers.wait_for(lambda: not helpers.pid_alive(helper) and not helpers.pid_alive(pid), timeout=20)
    assert os.listdir(api.root) == []
