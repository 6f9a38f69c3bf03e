"""A conformance suite for runc-compatible OCI runtimes, against runtime-spec v1.3.0.

The suite drives a runtime binary through its command line (create, start, state, kill, delete, run) with
bundles it builds itself, and checks each spec rule from outside: inside the container with busybox, or
through /proc/<pid> on the host. Run it with ``python -m conformance --runtime PATH``.
"""

from conformance.harness import Case, CaseContext, CaseFailed, CaseSkipped, Runtime, all_cases

SPEC_VERSION = "1.3.0"

__all__ = ["SPEC_VERSION", "Case", "CaseContext", "CaseFailed", "CaseSkipped", "Runtime", "all_cases"]
