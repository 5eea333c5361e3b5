"""Pulls through Docker's API (the socket an ECS AMI or Lambda's image has): the progress the run's
events show, and the registry's reasons in one line. Against a real daemon API (Podman's, serving a
socket here) and a real registry; Docker's byte-level stream format is checked on its documented
shape, since no Docker daemon runs here."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dstack.agent.container import PullError, PullProgress, api_pull, split_reference
from tests.harness import need, wait_for
from tests.registry import Registry, can_run_containers


def test_docker_byte_progress_in_percent() -> None:
    progress = PullProgress("ghcr.io/org/img:1", "1", every=0)
    stream = [
        {"status": "Pulling from org/img", "id": "1"},
        {"status": "Pulling fs layer", "progressDetail": {}, "id": "a"},
        {"status": "Pulling fs layer", "progressDetail": {}, "id": "b"},
        {"status": "Downloading", "progressDetail": {"current": 300_000_000, "total": 1_000_000_000}, "id": "a"},
        {"status": "Downloading", "progressDetail": {"current": 100_000_000, "total": 200_000_000}, "id": "b"},
        {"status": "Download complete", "progressDetail": {}, "id": "b"},
    ]
    messages = [m for m in (progress.feed(item) for item in stream) if m]
    assert messages[-2:] == ["pulling image ghcr.io/org/img:1 (1.2 GB, 33%)", "pulling image ghcr.io/org/img:1 (1.2 GB, 41%)"]
    # ...at most every `every` seconds.
    slow = PullProgress("x:1", "1", every=3600)
    assert [slow.feed(item) for item in stream] == [None] * len(stream)


def test_references_split_into_repository_and_tag() -> None:
    assert split_reference("127.0.0.1:5000/team/img:2") == ("127.0.0.1:5000/team/img", "2")
    assert split_reference("127.0.0.1:5000/team/img") == ("127.0.0.1:5000/team/img", "latest")
    assert split_reference("ubuntu@sha256:abc") == ("ubuntu", "sha256:abc")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, Registry, Registry]]:
    """A Docker API socket (Podman's service, with a storage of its own) and two registries: one
    public, one private (htpasswd)."""
    ok, why = can_run_containers()
    need(ok, why)
    need(os.geteuid() == 0, "Podman's service with its own storage runs as root here")
    public = Registry(tmp_path / "public").start()
    private = Registry(tmp_path / "private", users={"robot": "s3cret"}).start()
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{public.host}"\ninsecure = true\n'
                    f'[[registry]]\nlocation = "{private.host}"\ninsecure = true\n')
    short = Path(tempfile.mkdtemp(prefix="dsock-"))  # a socket's path and podman's runroot must be short
    sock = short / "docker.sock"
    service = subprocess.Popen(
        ["podman", "--storage-driver", "vfs", "--root", str(tmp_path / "storage"), "--runroot", str(short / "run"), "system", "service",
         "--time", "0", f"unix://{sock}"], env={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(sock.exists, 30, message="Podman's API socket")
        yield str(sock), public, private
    finally:
        service.terminate()
        service.wait(timeout=30)
        public.stop()
        private.stop()
        shutil.rmtree(short, ignore_errors=True)


def test_pull_through_the_api_reports_layers_and_registry_reasons(daemon: tuple[str, Registry, Registry]) -> None:
    sock, public, private = daemon
    image = public.push_busybox("team/box:1")
    events: list[str] = []
    api_pull(sock, image, None, events.append)
    assert events and events[-1].startswith(f"pulling image {image} (") and events[-1].endswith(" layers)"), events
    # A missing image and refused credentials end at once, with the registry's reason.
    with pytest.raises(PullError, match=f"^image not found: {public.host}/team/nothing:1$"):
        api_pull(sock, f"{public.host}/team/nothing:1", None, events.append)
    secret_image = private.push_busybox("team/secret:1")
    with pytest.raises(PullError, match=f"^registry refused credentials for {private.host}"):
        api_pull(sock, secret_image, {"username": "robot", "password": "wrong"}, events.append)
    api_pull(sock, secret_image, {"username": "robot", "password": "s3cret"}, events.append)
