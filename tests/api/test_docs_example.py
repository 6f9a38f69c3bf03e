"""The worked example of docs/api.md, run as it stands (as root: it sets memory and pids limits, which a
rootless user gets only in a delegated cgroup): its output must be what the page says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import helpers
import pytest

DOC = helpers.REPO / "docs" / "api.md"


def blocks() -> tuple[str, str]:
    text = DOC.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    printed = re.search(r"It prints:\n\n```\n(.*?)```", text, re.S)
    assert code and printed, "docs/api.md lost its example or its output"
    return code.group(1), printed.group(1)


@pytest.mark.skipif(os.geteuid() != 0, reason="the example sets memory and pids limits: as root")
def test_the_worked_example_prints_what_the_page_says(harness):
    code, printed = blocks()
    assert code.count("runtime = ocirt.Runtime()") == 1
    root = harness.root_for(None)
    # The harness's state root and cgroup parent, so its leak check sees what the example makes.
    code = code.replace("runtime = ocirt.Runtime()",
                        f"runtime = ocirt.Runtime({str(root)!r}, cgroup_parent={helpers.CGROUP_PARENT!r})")
    package = str(helpers.REPO)
    out = harness.dir / "example.out"
    with open(out, "w+") as output:
        done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {package!r})\n" + code],
                              stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.PIPE, text=True,
                              timeout=60, env=helpers.base_env())
        output.seek(0)
        text = output.read()
    assert done.returncode == 0, done.stderr
    assert text == printed
    assert not root.exists() or os.listdir(root) == []
