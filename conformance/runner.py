"""Run cases against one runtime, or several side by side, and report."""

from __future__ import annotations

import fnmatch
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from conformance.harness import (
    Case,
    CaseContext,
    CaseFailed,
    CaseSkipped,
    Runtime,
    RuntimeUser,
    all_cases,
)

ROOTLESS_USER = "ocirt-conf"
# Newest first: the suite writes 1.3.0 configs, and falls back only so a runtime that refuses the version
# string can still be scored on everything else (config_accepts_oci_1_3_0 records the refusal).
OCI_VERSIONS = ("1.3.0", "1.2.0", "1.1.0", "1.0.2")
REPO = Path(__file__).resolve().parent.parent


@dataclass
class CaseResult:
    name: str
    section: str
    rule: str
    status: str
    reason: str
    seconds: float


def ensure_rootless_user(name: str = ROOTLESS_USER) -> RuntimeUser:
    """The unprivileged account rootless runs use; created once and kept (see docs/conformance.md)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(name)
    return RuntimeUser(name, entry.pw_uid, entry.pw_gid)


def cgroup2_hybrid_mount_present() -> bool:
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == "/sys/fs/cgroup/unified" for line in mountinfo)


class Session:
    """A work directory, a template rootfs and a state root, shared by all cases of one runtime."""

    def __init__(self, name: str, binary: str, *, rootless: bool, hide_cgroup2: bool) -> None:
        from ocirt.bundle import build_rootfs

        self.work_dir = Path(tempfile.mkdtemp(prefix="ocirt-conformance-"))
        os.chmod(self.work_dir, 0o755)
        user = ensure_rootless_user() if rootless and os.geteuid() == 0 else None
        state_root = self.work_dir / "state"
        state_root.mkdir()
        xdg = None
        if user is not None:
            xdg = self.work_dir / "xdg"
            xdg.mkdir(mode=0o700)
            os.chown(xdg, user.uid, user.gid)
            os.chown(state_root, user.uid, user.gid)
        self.runtime = Runtime(name, binary, state_root, hide_cgroup2=hide_cgroup2, user=user,
                               xdg_runtime_dir=xdg)
        self.template = build_rootfs(self.work_dir / "rootfs-template")
        self.runtime.oci_version = self._accepted_version()

    def _accepted_version(self) -> str:
        for version in OCI_VERSIONS:
            ctx = CaseContext(self.runtime, self.work_dir, self.template, f"probe-{version}")
            try:
                ctx.config["ociVersion"] = version
                if ctx.run(["true"]).returncode == 0:
                    return version
            except CaseFailed:
                pass
            finally:
                ctx.cleanup()
        return OCI_VERSIONS[0]

    def run_case(self, case: Case) -> CaseResult:
        started = time.monotonic()
        if case.rootful_only and self.runtime.rootless:
            return CaseResult(case.name, case.section, case.rule, "SKIP", f"rootless: {case.rootful_only}", 0.0)
        ctx = CaseContext(self.runtime, self.work_dir, self.template, case.name)
        try:
            case.func(ctx)
            status, reason = "PASS", case.rule
        except CaseSkipped as exc:
            status, reason = "SKIP", str(exc)
        except CaseFailed as exc:
            status, reason = "FAIL", str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken case is reported, it does not stop the suite
            status, reason = "FAIL", f"case error: {type(exc).__name__}: {exc}"
        finally:
            ctx.cleanup()
        return CaseResult(case.name, case.section, case.rule, status, reason, time.monotonic() - started)

    def close(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


def select_cases(patterns: list[str] | None) -> list[Case]:
    cases = all_cases()
    if not patterns:
        return cases
    def wanted(name: str) -> bool:
        return any(p in name or fnmatch.fnmatch(name, p) for p in patterns)
    return [c for c in cases if wanted(c.name)]


def summary_line(results: list[CaseResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    return f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"


def run_suite(name: str, binary: str, *, rootless: bool, hide_cgroup2: bool, patterns: list[str] | None,
              echo: bool) -> tuple[list[CaseResult], str]:
    session = Session(name, binary, rootless=rootless, hide_cgroup2=hide_cgroup2)
    results = []
    try:
        if echo and session.runtime.oci_version != OCI_VERSIONS[0]:
            print(f"note: {name} refuses ociVersion {OCI_VERSIONS[0]}; the other cases use "
                  f"{session.runtime.oci_version}", flush=True)
        for case in select_cases(patterns):
            result = session.run_case(case)
            results.append(result)
            if echo:
                print(f"{result.status} {result.name} — {result.reason}", flush=True)
    finally:
        session.close()
    return results, session.runtime.oci_version


def known_runtimes() -> list[tuple[str, str, bool]]:
    """(name, binary, hide_cgroup2) for ocirt, runc and crun, whichever exist here."""
    found = []
    ocirt = REPO / "bin" / "ocirt"
    if ocirt.exists():
        found.append(("ocirt", str(ocirt), False))
    for name in ("runc", "crun"):
        path = shutil.which(name)
        if path:
            found.append((name, path, name == "crun" and cgroup2_hybrid_mount_present()))
    return found


def compare(*, rootless: bool, patterns: list[str] | None, as_json: bool, only: list[str] | None = None) -> int:
    import json

    runtimes = [rt for rt in known_runtimes() if not only or rt[0] in only]
    if not runtimes:
        print("no runtime found (looked for bin/ocirt, runc, crun)", file=sys.stderr)
        return 2
    table: dict[str, dict[str, CaseResult]] = {}
    versions = {}
    for name, binary, hide in runtimes:
        print(f"running {name} ({binary}{', cgroup2 hidden' if hide else ''})...", file=sys.stderr, flush=True)
        results, versions[name] = run_suite(name, binary, rootless=rootless, hide_cgroup2=hide,
                                            patterns=patterns, echo=False)
        table[name] = {r.name: r for r in results}
    names = [c.name for c in select_cases(patterns)]
    if as_json:
        print(json.dumps({"rootless": rootless, "ociVersionUsed": versions,
                          "results": {rt: [asdict(r) for r in res.values()] for rt, res in table.items()}},
                         indent=2))
        return 0
    header = ["case", *table]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for case_name in names:
        cells = [table[rt][case_name].status if case_name in table[rt] else "-" for rt in table]
        print(f"| {case_name} | " + " | ".join(cells) + " |")
    print()
    for rt, res in table.items():
        print(f"{rt}: {summary_line(list(res.values()))} (configs written as ociVersion {versions[rt]})")
    print()
    for rt, res in table.items():
        for result in res.values():
            if result.status != "PASS":
                print(f"- {rt} {result.status} {result.name}: {result.reason}")
    return 0
