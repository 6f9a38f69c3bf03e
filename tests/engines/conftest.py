"""Session fixtures for the engine tests: the busybox image, a rootful and a rootless podman, a containerd
and a dockerd, each under the session directory, each torn down (and checked for leaks) at the end.

Every test here is marked ``engines``. A missing engine package skips its tests with the reason; run
``scripts/engines-setup`` (CI does, through ``scripts/test --engines``) to install them.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_harness as eh  # noqa: E402
import helpers  # noqa: E402


def require(engine: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the engine tests start daemons and create users: they need root")
    missing = eh.missing_tools(engine)
    if missing:
        pytest.skip(f"{engine} is not installed (missing {', '.join(missing)}): run scripts/engines-setup")


def finish(base: Path, problems: list[str]) -> None:
    problems = problems + eh.leftovers(base)
    if problems:
        pytest.fail("the engine left things behind:\n  " + "\n  ".join(problems))


@pytest.fixture(scope="session")
def engines_base(harness_session) -> Iterator[Path]:
    base = helpers.world_reachable_dir(harness_session.base / "engines")
    yield base
    problems = eh.leftovers(base) + eh.remove_engine_cgroups()
    shutil.rmtree(base, ignore_errors=True)
    if problems:
        pytest.fail("the engine tests left things behind:\n  " + "\n  ".join(problems))


@pytest.fixture(scope="session")
def rootfs_tar(harness_session, engines_base: Path) -> Path:
    return eh.write_rootfs_tar(harness_session.rootfs(), engines_base / "rootfs.tar")


@pytest.fixture(scope="session")
def podman(engines_base: Path, rootfs_tar: Path) -> Iterator[eh.Podman]:
    require("podman")
    engine = eh.Podman(engines_base / "podman", eh.runtime_under_test())
    try:
        engine.import_image(rootfs_tar)
        yield engine
    finally:
        problems = engine.close()
        finish(engine.base, problems)


@pytest.fixture(scope="session")
def docker_archive(podman: eh.Podman, engines_base: Path) -> Path:
    """The image as a docker-archive, the form both `ctr images import` and `docker load` take."""
    path = engines_base / "image.docker-archive.tar"
    if not path.exists():
        podman("save", "--format", "docker-archive", "--output", str(path), eh.IMAGE)
        os.chmod(path, 0o644)
    return path


@pytest.fixture(scope="session")
def podman_rootless(harness_session, engines_base: Path, rootfs_tar: Path) -> Iterator[eh.Podman]:
    require("podman")
    user = harness_session.user("subid")
    runtime = harness_session.runtime_for(user)
    engine = eh.Podman(engines_base / "podman-rootless", runtime, user=user)
    try:
        engine.import_image(rootfs_tar)
        yield engine
    finally:
        problems = engine.close()
        finish(engine.base, problems)


@pytest.fixture(scope="session")
def containerd(engines_base: Path, docker_archive: Path) -> Iterator[eh.Containerd]:
    require("containerd")
    engine = eh.Containerd(engines_base / "containerd", eh.runtime_under_test())
    try:
        engine.ctr("images", "import", str(docker_archive))
        yield engine
    finally:
        problems = engine.close()
        finish(engine.base, problems)


@pytest.fixture(scope="session")
def docker(engines_base: Path, docker_archive: Path, containerd: eh.Containerd) -> Iterator[eh.Docker]:
    require("docker")
    engine = eh.Docker(engines_base / "docker", eh.runtime_under_test(), containerd)
    try:
        engine("load", "--input", str(docker_archive))
        yield engine
    finally:
        problems = engine.close()
        finish(engine.base, problems)


@pytest.fixture(scope="session")
def containerd_cri(engines_base: Path, podman: eh.Podman) -> Iterator[eh.ContainerdCRI]:
    require("containerd")
    # Only looked up, never imported here: grpc's threads and fork handlers would follow every process
    # the rest of the suite forks (see ContainerdCRI.call).
    import importlib.util

    if importlib.util.find_spec("grpc") is None:
        pytest.skip("the CRI test speaks gRPC: install python3-grpcio (scripts/engines-setup does)")
    archive = engines_base / "pause.docker-archive.tar"
    podman("import", "--change", 'CMD ["/bin/sleep", "2147483647"]', "--change", eh.IMAGE_PATH_ENV, str(engines_base / "rootfs.tar"),
           eh.ContainerdCRI.SANDBOX_IMAGE)
    podman("save", "--format", "docker-archive", "--output", str(archive), eh.ContainerdCRI.SANDBOX_IMAGE)
    engine = eh.ContainerdCRI(engines_base / "containerd-cri", eh.runtime_under_test())
    try:
        engine.ctr("images", "import", str(archive))
        yield engine
    finally:
        problems = engine.close()
        finish(engine.base, problems)
