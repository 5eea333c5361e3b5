"""EC2 placement groups and capacity reservations, which moto does not implement: stand-ins on the
FaultProxy between the server and moto, answering in EC2's XML, authorized like IAM would (the
caller's inline policies, evaluated by tests/iam_eval.py, DryRun included). Placement groups:
Create/Describe/DeletePlacementGroup, refusing to delete a group while an instance launched into it
is not terminated (it sees the launches on their way through the proxy). Capacity reservations:
DescribeCapacityReservations of the ones a test declares."""

from __future__ import annotations

import re
import threading
import urllib.parse
from typing import Any
from xml.sax.saxutils import escape

from tests.aws_harness import ACCOUNT, MotoAWS
from tests.fault_proxy import Request
from tests.iam_eval import AuthRequest, allowed

_ACTIONS = {"CreatePlacementGroup", "DescribePlacementGroups", "DeletePlacementGroup"}
_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    body = (f"<Response><Errors><Error><Code>{code}</Code><Message>{escape(message)}</Message></Error></Errors>"
            "<RequestID>placement-stand-in</RequestID></Response>")
    return status, body.encode()


class _Authorizing:
    def __init__(self, aws: MotoAWS, *, user: str, region: str) -> None:
        self.aws, self.user, self.region = aws, user, region

    def _authorized(self, action: str, resource: str, context: dict[str, str]) -> bool:
        with self.aws.unenforced():
            iam = self.aws.client("iam")
            policies = [iam.get_user_policy(UserName=self.user, PolicyName=name)["PolicyDocument"]
                        for name in iam.list_user_policies(UserName=self.user)["PolicyNames"]]
        request = AuthRequest(f"ec2:{action}", resource, context)
        return any(allowed(p, request) for p in policies)


class CapacityReservations(_Authorizing):
    def __init__(self, aws: MotoAWS, *, user: str, region: str) -> None:
        super().__init__(aws, user=user, region=region)
        self.reservations: dict[str, dict[str, Any]] = {}  # id -> {"type", "zone", "count", "state"}

    def rule(self, request: Request) -> tuple[int, bytes] | None:
        params = dict(urllib.parse.parse_qsl(request.body.decode(errors="replace")))
        if params.get("Action") != "DescribeCapacityReservations":
            return None
        if not self._authorized("DescribeCapacityReservations", "*", {}):
            return _error(403, "UnauthorizedOperation", "You are not authorized to perform this operation.")
        if params.get("DryRun") == "true":
            return _error(412, "DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
        wanted = [v for k, v in params.items() if re.fullmatch(r"CapacityReservationId\.\d+", k)]
        missing = [w for w in wanted if w not in self.reservations]
        if missing:
            return _error(400, "InvalidCapacityReservationId.NotFound",
                          f"The capacity reservation ID '{missing[0]}' does not exist")
        items = "".join(
            f"<item><capacityReservationId>{rid}</capacityReservationId><instanceType>{r['type']}</instanceType>"
            f"<instancePlatform>Linux/UNIX</instancePlatform><availabilityZone>{r['zone']}</availabilityZone>"
            f"<tenancy>default</tenancy><totalInstanceCount>{r['count']}</totalInstanceCount>"
            f"<availableInstanceCount>{r['count']}</availableInstanceCount><state>{r['state']}</state>"
            "<instanceMatchCriteria>targeted</instanceMatchCriteria></item>"
            for rid, r in self.reservations.items() if not wanted or rid in wanted)
        return 200, PlacementGroups._response("DescribeCapacityReservationsResponse",
                                              f"<capacityReservationSet>{items}</capacityReservationSet>")


class PlacementGroups(_Authorizing):
    def __init__(self, aws: MotoAWS, *, user: str, region: str) -> None:
        super().__init__(aws, user=user, region=region)
        self.groups: dict[str, dict[str, Any]] = {}  # name -> {"id", "strategy", "tags"}
        self.members: dict[str, set[str]] = {}  # group name -> instance ids launched into it
        self._lock = threading.Lock()

    def rule(self, request: Request) -> tuple[int, bytes] | None:
        params = dict(urllib.parse.parse_qsl(request.body.decode(errors="replace")))
        action = params.get("Action")
        if action not in _ACTIONS:
            return None
        return self._handle(action, params)

    def observe(self, request: Request, payload: bytes) -> bytes:
        """Launches into a group, from the RunInstances answers that pass through."""
        params = dict(urllib.parse.parse_qsl(request.body.decode(errors="replace")))
        group = params.get("Placement.GroupName")
        if params.get("Action") == "RunInstances" and group:
            launched = {i.decode() for i in re.findall(rb"<instanceId>(i-[0-9a-f]+)</instanceId>", payload)}
            with self._lock:
                self.members.setdefault(group, set()).update(launched)
        return payload

    def _handle(self, action: str, params: dict[str, str]) -> tuple[int, bytes]:
        name = params.get("GroupName") or params.get("GroupName.1") or ""
        with self._lock:
            group = self.groups.get(name)
        context = {f"aws:ResourceTag/{k}": v for k, v in (group or {}).get("tags", {}).items()}
        resource = (f"arn:aws:ec2:{self.region}:{ACCOUNT}:placement-group/{name}"
                    if action == "DeletePlacementGroup" else "*")
        if not self._authorized(action, resource, context if action == "DeletePlacementGroup" else {}):
            return _error(403, "UnauthorizedOperation", "You are not authorized to perform this operation.")
        if params.get("DryRun") == "true":
            return _error(412, "DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
        with self._lock:
            if action == "CreatePlacementGroup":
                if name in self.groups:
                    return _error(400, "InvalidPlacementGroup.Duplicate", f"The placement group '{name}' already exists.")
                tags = {params[k]: params.get(k.replace(".Key", ".Value"), "") for k in params
                        if re.fullmatch(r"TagSpecification\.1\.Tag\.\d+\.Key", k)}
                self.groups[name] = {"id": f"pg-{len(self.groups):017x}", "strategy": params.get("Strategy", ""),
                                     "tags": tags}
                return 200, self._response("CreatePlacementGroupResponse",
                                           f"<placementGroup>{self._item(name)}</placementGroup>")
            if action == "DescribePlacementGroups":
                by_name = [v for k, v in params.items() if re.fullmatch(r"GroupName\.\d+", k)]
                by_filter = [v for k, v in params.items() if re.fullmatch(r"Filter\.\d+\.Value\.\d+", k)]
                missing = [n for n in by_name if n not in self.groups]
                if missing:
                    return _error(400, "InvalidPlacementGroup.Unknown",
                                  f"The Placement Group '{missing[0]}' is unknown.")
                names = [n for n in self.groups if (not by_name or n in by_name) and (not by_filter or n in by_filter)]
                items = "".join(f"<item>{self._item(n)}</item>" for n in names)
                return 200, self._response("DescribePlacementGroupsResponse",
                                           f"<placementGroupSet>{items}</placementGroupSet>")
            if name not in self.groups:
                return _error(400, "InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown.")
            live = self._live(self.members.get(name, set()))
        if live:
            return _error(400, "InvalidPlacementGroup.InUse", f"The placement group '{name}' is in use.")
        with self._lock:
            del self.groups[name]
        return 200, self._response("DeletePlacementGroupResponse", "<return>true</return>")

    def _live(self, instance_ids: set[str]) -> list[str]:
        if not instance_ids:
            return []
        ec2 = self.aws.client("ec2", self.region)
        reservations = ec2.describe_instances(InstanceIds=sorted(instance_ids))["Reservations"]
        return [i["InstanceId"] for r in reservations for i in r["Instances"] if i["State"]["Name"] != "terminated"]

    def _item(self, name: str) -> str:
        group = self.groups[name]
        tags = "".join(f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>"
                       for k, v in group["tags"].items())
        return (f"<groupName>{escape(name)}</groupName><groupId>{group['id']}</groupId><state>available</state>"
                f"<strategy>{group['strategy']}</strategy><tagSet>{tags}</tagSet>")

    @staticmethod
    def _response(root: str, inner: str) -> bytes:
        return f'<{root} xmlns="{_NS}"><requestId>placement-stand-in</requestId>{inner}</{root}>'.encode()

