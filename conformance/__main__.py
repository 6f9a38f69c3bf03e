"""python -m conformance --runtime PATH [--rootless] [-k PATTERN] [--json] | --compare [--rootless]"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict

from conformance.runner import cgroup2_hybrid_mount_present, compare, run_suite, summary_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance",
                                     description="Score a runc-compatible runtime against OCI runtime-spec 1.3.0.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--runtime", help="the runtime binary (a path, or a name looked up in PATH)")
    target.add_argument("--compare", nargs="?", const="", metavar="NAMES",
                        help="run ocirt, runc and crun side by side (or only the comma-separated NAMES)")
    parser.add_argument("--rootless", action="store_true",
                        help=f"run the runtime as an unprivileged user ({'ocirt-conf'}) with rootless configs")
    parser.add_argument("-k", dest="patterns", action="append", metavar="PATTERN",
                        help="only cases whose name contains PATTERN or matches it as a glob (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--hide-cgroup2", choices=("auto", "yes", "no"), default="auto",
                        help="run each call in a mount namespace without /sys/fs/cgroup/unified "
                             "(auto: only for crun on a hybrid host)")
    args = parser.parse_args(argv)

    if args.rootless and os.geteuid() != 0:
        print("note: not root, so the runtime runs as the current user", file=sys.stderr)
    if args.compare is not None:
        only = [name for name in args.compare.split(",") if name] or None
        return compare(rootless=args.rootless, patterns=args.patterns, as_json=args.json, only=only)

    binary = args.runtime if os.sep in args.runtime else shutil.which(args.runtime)
    if not binary or not os.access(binary, os.X_OK):
        print(f"runtime {args.runtime!r} is not an executable", file=sys.stderr)
        return 2
    binary = os.path.abspath(binary)
    name = os.path.basename(binary)
    hide = {"yes": True, "no": False}.get(args.hide_cgroup2,
                                         name == "crun" and cgroup2_hybrid_mount_present())
    results, version = run_suite(name, binary, rootless=args.rootless, hide_cgroup2=hide,
                                 patterns=args.patterns, echo=not args.json)
    if args.json:
        print(json.dumps({"runtime": binary, "rootless": args.rootless, "ociVersionUsed": version,
                          "results": [asdict(r) for r in results], "summary": summary_line(results)}, indent=2))
    else:
        print(summary_line(results))
    return 1 if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
