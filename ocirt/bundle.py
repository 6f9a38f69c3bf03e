"""Build the default bundle: a busybox rootfs from Debian's busybox-static plus a config.

The demo, the tests, the conformance suite and the benchmark all build their bundles here, so every one
of them runs the same rootfs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
user:x:1000:1000:user:/home/user:/bin/sh
"""
GROUP = """root:x:0:
daemon:x:1:
tty:x:5:
users:x:100:user
user:x:1000:
nogroup:x:65534:
"""


class BundleError(Exception):
    pass


def find_static_busybox() -> str:
    for candidate in BUSYBOX_CANDIDATES:
        if os.path.exists(candidate):
            out = subprocess.run(["file", "-L", candidate], capture_output=True, text=True).stdout \
                if shutil.which("file") else "statically linked"
            if "dynamically linked" in out:
                continue
            return candidate
    raise BundleError("no static busybox found: install Debian's busybox-static (apt-get install busybox-static)")


def build_rootfs(dest: str | os.PathLike, busybox: str | None = None) -> Path:
    """Create a minimal rootfs at ``dest``: busybox with a symlink per applet, and the usual directories."""
    root = Path(dest)
    busybox = busybox or find_static_busybox()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "home/user",
              "var", "run", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    (root / "etc" / "hostname").write_text("ocirt\n")
    return root


def write_config(bundle: str | os.PathLike, config: dict) -> Path:
    path = Path(bundle) / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def make_bundle(bundle: str | os.PathLike, *, rootless: bool = False, args: list[str] | None = None,
                terminal: bool = False, rootfs: str | None = None, uid: int | None = None,
                gid: int | None = None) -> Path:
    """A runnable bundle at ``bundle``. With ``rootfs`` the config points at that shared, read-only rootfs
    instead of building one inside the bundle."""
    from ocirt.spec.default import default_config

    bundle = Path(bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    config = default_config(rootless=rootless, args=args or ["sh", "-c", "echo hello from ocirt"],
                            terminal=terminal, uid=uid, gid=gid)
    if rootfs is None:
        build_rootfs(bundle / "rootfs")
    else:
        config["root"]["path"] = str(rootfs)
    write_config(bundle, config)
    return bundle
