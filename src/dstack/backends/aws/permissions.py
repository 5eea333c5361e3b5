"""The optional IAM statements (iam_policy.OPTIONAL_ACTIONS: volumes, clusters, reservations): whether
the backend's credentials hold them, asked with DryRun calls (EC2 authorizes them without acting),
so that what needs them is refused at plan time, naming the missing actions, instead of failing
half-way."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from dstack.backends.aws.errors import DENIED_ERRORS, error_code
from dstack.backends.aws.iam_policy import OPTIONAL_ACTIONS

# Made-up ids: a DryRun call is authorized (or not) before EC2 looks them up.
_PROBE_VOLUME = "vol-0123456789abcdef0"
_PROBE_INSTANCE = "i-0123456789abcdef0"


class OptionalPermissions:
    def __init__(self, *, ec2: Any, region: str) -> None:
        self.ec2 = ec2
        self.region = region

    def permissions_gap(self, features: set[str], bucket: str) -> str | None:
        missing = [action for feature in sorted(features) if feature in OPTIONAL_ACTIONS
                   for action in OPTIONAL_ACTIONS[feature][0] if not self._allowed(action)]
        if not missing:
            return None
        named = ",".join(sorted(features & set(OPTIONAL_ACTIONS)))
        return (f"the AWS backend's IAM policy lacks {', '.join(missing)}: add the optional statement that "
                f"`dstack aws iam-policy --bucket {bucket} --with {named}` prints (docs/backends.md)")

    def _allowed(self, action: str) -> bool:
        # Asked every time (a few DryRun calls per plan): a statement just added or taken away
        # counts at once.
        return self._probe(action)

    def _probe(self, action: str) -> bool:
        zone = f"{self.region}a"
        calls = {
            "ec2:DescribeVolumes": lambda: self.ec2.describe_volumes(DryRun=True, MaxResults=5),
            "ec2:CreateVolume": lambda: self.ec2.create_volume(DryRun=True, AvailabilityZone=zone, Size=1,
                                                               VolumeType="gp3"),
            "ec2:AttachVolume": lambda: self.ec2.attach_volume(DryRun=True, VolumeId=_PROBE_VOLUME,
                                                               InstanceId=_PROBE_INSTANCE, Device="/dev/sdf"),
            "ec2:DetachVolume": lambda: self.ec2.detach_volume(DryRun=True, VolumeId=_PROBE_VOLUME),
            "ec2:DescribePlacementGroups": lambda: self.ec2.describe_placement_groups(DryRun=True),
            "ec2:CreatePlacementGroup": lambda: self.ec2.create_placement_group(
                DryRun=True, GroupName="dstack-probe", Strategy="cluster"),
            "ec2:DescribeCapacityReservations": lambda: self.ec2.describe_capacity_reservations(DryRun=True),
        }
        try:
            calls[action]()
        except ClientError as exc:
            # DryRunOperation: it would have succeeded. Any error other than a denial (an unknown
            # id, a throttle) says nothing against the permission: the real call will tell.
            return error_code(exc) not in DENIED_ERRORS
        except Exception:  # noqa: BLE001 - an answer that cannot be read says nothing against it either
            return True
        return True
