"""EBS network volumes: create (gp3, tagged with the bucket) or register an existing one, attach
to the run's instance as a named device, detach when the run ends, delete what dstack created.
Their EC2 actions are the optional `volumes` statement (permissions.py asks for them first).
"""

from __future__ import annotations

import math
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from dstack.backends.aws.errors import describe, error_code
from dstack.backends.base import LaunchedInstance, ProvisionedVolume
from dstack.core.errors import BackendError


class EBSVolumes:
    def __init__(self, *, ec2: Any, region: str, bucket: str, tags: list[dict[str, str]],
                 default_zone: Any) -> None:
        self.ec2 = ec2
        self.region = region
        self.bucket = bucket
        self.tags = tags
        self._default_zone = default_zone  # () -> the zone new volumes go to when none is asked for

    # --- lifecycle ---------------------------------------------------------------------------
    def create(self, *, project: str, name: str, availability_zone: str | None, size_gb: float,
               tags: dict[str, str], request_id: str) -> ProvisionedVolume:
        zone = availability_zone or self._default_zone()
        own = [*self.tags, {"Key": "dstack_project", "Value": project}, {"Key": "dstack_volume", "Value": name},
               {"Key": "dstack_volume_id", "Value": request_id}, {"Key": "Name", "Value": f"dstack-{name}"}]
        taken = {t["Key"] for t in own}
        own += [{"Key": k, "Value": v} for k, v in tags.items() if k not in taken]
        try:
            earlier = self.ec2.describe_volumes(Filters=[
                {"Name": "tag:dstack_bucket", "Values": [self.bucket]},
                {"Name": "tag:dstack_volume_id", "Values": [request_id]}])["Volumes"]
            if earlier:
                return self._provisioned(earlier[0])
            # ClientToken: EC2 itself answers a repeated request with the volume it created.
            raw = self.ec2.create_volume(AvailabilityZone=zone, Size=max(1, math.ceil(size_gb)), VolumeType="gp3",
                                         TagSpecifications=[{"ResourceType": "volume", "Tags": own}],
                                         ClientToken=request_id)
        except (ClientError, BotoCoreError) as exc:
            raise BackendError(f"cannot create the EBS volume: {describe(exc)}") from exc
        return self._provisioned(raw)

    def register(self, *, volume_id: str) -> ProvisionedVolume:
        raw = self._describe(volume_id)
        if raw is None:
            raise BackendError(f"volume_id {volume_id}: no such EBS volume in {self.region}")
        return self._provisioned(raw)

    def state(self, volume: ProvisionedVolume) -> ProvisionedVolume:
        raw = self._describe(volume.volume_id)
        if raw is None:
            raise BackendError(f"EBS volume {volume.volume_id} is gone from {self.region}")
        if raw["State"] == "error":
            raise BackendError(f"EBS could not create volume {volume.volume_id} (state: error)")
        return self._provisioned(raw)

    def attach(self, volume: ProvisionedVolume, instance: LaunchedInstance, device: str) -> bool:
        raw = self._describe(volume.volume_id)
        attachments = (raw or {}).get("Attachments") or []
        if any(a["InstanceId"] == instance.instance_id for a in attachments):
            return True
        try:
            self.ec2.attach_volume(VolumeId=volume.volume_id, InstanceId=instance.instance_id, Device=device)
        except ClientError as exc:
            if error_code(exc) in ("IncorrectState", "IncorrectInstanceState", "InvalidInstanceID.NotFound"):
                return False  # the instance is not running yet (or EC2 does not know it yet)
            raise BackendError(f"cannot attach EBS volume {volume.volume_id}: {describe(exc)}") from exc
        return True

    def detach(self, volume: ProvisionedVolume, instance_id: str) -> bool:
        raw = self._describe(volume.volume_id)
        if raw is None:
            return True
        attached = [a for a in raw.get("Attachments") or [] if a["InstanceId"] == instance_id]
        if not attached:
            return True
        if attached[0].get("State") == "detaching":
            return False
        try:
            self.ec2.detach_volume(VolumeId=volume.volume_id, InstanceId=instance_id)
        except ClientError as exc:
            if error_code(exc) in ("IncorrectState", "InvalidAttachment.NotFound", "InvalidInstanceID.NotFound"):
                return False  # detaching already (e.g. its instance is terminating): look again later
            raise BackendError(f"cannot detach EBS volume {volume.volume_id}: {describe(exc)}") from exc
        return False

    def delete(self, volume: ProvisionedVolume) -> None:
        try:
            self.ec2.delete_volume(VolumeId=volume.volume_id)
        except ClientError as exc:
            if error_code(exc) == "InvalidVolume.NotFound":
                return
            raise BackendError(f"cannot delete EBS volume {volume.volume_id}: {describe(exc)}") from exc

    @staticmethod
    def mount(volume: ProvisionedVolume, device: str) -> dict[str, Any]:
        # Nitro instances show an EBS volume as an NVMe disk whose serial is the volume id without
        # the dash (udev links it under /dev/disk/by-id); Xen ones as the device name, or xvdX.
        return {"kind": "block", "device": device, "serial": volume.volume_id.replace("-", "")}

    def _describe(self, volume_id: str) -> dict[str, Any] | None:
        try:
            volumes = self.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
        except ClientError as exc:
            if error_code(exc) in ("InvalidVolume.NotFound", "InvalidVolumeID.Malformed"):
                return None
            raise BackendError(f"cannot read EBS volume {volume_id}: {describe(exc)}") from exc
        return volumes[0] if volumes else None

    def _provisioned(self, raw: dict[str, Any]) -> ProvisionedVolume:
        return ProvisionedVolume(volume_id=raw["VolumeId"], region=self.region,
                                 availability_zone=raw.get("AvailabilityZone"), size_gb=raw.get("Size"),
                                 ready=raw.get("State") in ("available", "in-use"))
