"""Network volumes on the instance: wait for the disk the server attached (EBS), give it a file
system the first time, mount it under VOLUMES_DIR; or bind a directory the provider mounted
(a Lambda file system). The job sees each at its `path`."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

# Where a block volume is mounted on the instance (a directory per volume name): under the agent's
# own directory, which the container runtime sees at the same path.
VOLUMES_DIR = "/opt/dstack/volumes"
# How long the agent waits for an attached disk to appear (the server attaches it once the
# instance runs; EC2 takes seconds, rarely a minute).
ATTACH_TIMEOUT = 600.0
_BY_ID = "/dev/disk/by-id"


class VolumeError(Exception):
    pass


def mount_all(volumes: list[dict[str, Any]], *, event: Callable[[str], None],
              timeout: float = ATTACH_TIMEOUT) -> list[tuple[str, str]]:
    """(host path, job path) for each volume, mounted."""
    mounts = []
    for volume in volumes:
        mount = volume["mount"]
        if mount["kind"] == "dir":
            source = mount["source"]
            _wait(lambda src=source: os.path.isdir(src), timeout,
                  f"volumes: {volume['name']} ({source}) is not mounted on this instance")
            mounts.append((source, volume["path"]))
            continue
        event(f"waiting for volume {volume['name']} ({volume['volume_id']}) to be attached")
        device = _wait(lambda m=mount: _find_device(m), timeout,
                       f"volumes: {volume['name']} ({volume['volume_id']}) was not attached to this instance within "
                       f"{timeout:.0f} s")
        target = Path(VOLUMES_DIR) / volume["name"]
        target.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(target):
            if not _file_system(device):  # a new volume: ext4 the first time, as upstream does
                event(f"volume {volume['name']} is empty: creating an ext4 file system on it")
                _run(["mkfs.ext4", "-q", "-F", device], f"volumes: cannot format {volume['name']} ({device})")
            _run(["mount", device, str(target)], f"volumes: cannot mount {volume['name']} ({device})")
        event(f"volume {volume['name']} mounted at {volume['path']}")
        mounts.append((str(target), volume["path"]))
    return mounts


def unmount_all(volumes: list[dict[str, Any]]) -> list[str]:
    """Unmount the block volumes (so that the server can detach them cleanly); the failures."""
    failures = []
    for volume in volumes:
        if volume["mount"]["kind"] != "block":
            continue
        target = Path(VOLUMES_DIR) / volume["name"]
        if os.path.ismount(target):
            result = subprocess.run(["umount", str(target)], capture_output=True, text=True)
            if result.returncode != 0:
                failures.append(f"{volume['name']}: {result.stderr.strip()}")
    return failures


def _find_device(mount: dict[str, Any]) -> str | None:
    # Nitro: an NVMe disk whose serial is the volume id (udev's by-id link); Xen: the device name
    # given at attach time, or its xvd alias.
    candidates = [f"{_BY_ID}/nvme-Amazon_Elastic_Block_Store_{mount['serial']}", mount["device"],
                  mount["device"].replace("/dev/sd", "/dev/xvd")]
    for path in candidates:
        if os.path.exists(path):
            return os.path.realpath(path)
    return None


def _file_system(device: str) -> str:
    result = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", device], capture_output=True, text=True)
    return result.stdout.strip()


def _run(args: list[str], failure: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise VolumeError(f"{failure}: {(result.stderr or result.stdout).strip()}")


def _wait(check: Callable[[], Any], timeout: float, failure: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise VolumeError(failure)
        time.sleep(1.0)
