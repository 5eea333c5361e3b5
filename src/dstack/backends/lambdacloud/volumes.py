"""Lambda Cloud persistent file systems as network volumes: created (or registered by id) in a
region, named in the launch request of each instance that mounts them (Lambda mounts them over NFS
at their mount point, /lambda/nfs/NAME), shared by any number of instances, deleted when unused."""

from __future__ import annotations

import re
from typing import Any

from dstack.backends.base import ProvisionedVolume
from dstack.backends.lambdacloud.api import LambdaAPI, LambdaAPIError
from dstack.core.errors import BackendError

# Lambda's rule for file system names (its API's FilesystemCreateRequest).
NAME_PATTERN = re.compile(r"^[a-zA-Z]+[0-9a-zA-Z-]*$")


class LambdaFileSystems:
    def __init__(self, api: LambdaAPI) -> None:
        self.api = api

    def _list(self) -> list[dict[str, Any]]:
        try:
            return self.api.file_systems()
        except LambdaAPIError as exc:
            raise BackendError(f"cannot list Lambda file systems: {exc}") from exc

    def create(self, *, name: str, region: str) -> ProvisionedVolume:
        if not NAME_PATTERN.match(name) or len(name) > 60:
            raise BackendError(f"{name!r} cannot name a Lambda file system (letters first, then letters, digits "
                               "and dashes, at most 60): rename the volume")
        if any(fs["name"] == name for fs in self._list()):
            # Never adopted: deleting the dstack volume would delete someone else's data.
            raise BackendError(f"Lambda already has a file system named {name!r}; register it with "
                               "`volume_id` (its id, from Lambda's console) or choose another name")
        try:
            return _provisioned(self.api.create_file_system(name=name, region=region))
        except LambdaAPIError as exc:
            raise BackendError(f"cannot create the Lambda file system: {exc}") from exc

    def find(self, volume_id: str) -> ProvisionedVolume:
        for fs in self._list():
            if fs["id"] == volume_id:
                return _provisioned(fs)
        raise BackendError(f"Lambda has no file system {volume_id}")

    def delete(self, volume: ProvisionedVolume) -> None:
        try:
            self.api.delete_file_system(volume.volume_id)
        except LambdaAPIError as exc:
            if exc.status == 404:
                return
            raise BackendError(f"cannot delete the Lambda file system: {exc}") from exc


def _provisioned(fs: dict[str, Any]) -> ProvisionedVolume:
    return ProvisionedVolume(volume_id=fs["id"], region=fs["region"]["name"], ready=True,
                             data={"name": fs["name"], "mount_point": fs["mount_point"]})
