"""EC2 offers (types from DescribeInstanceTypes, prices from the bundled catalog and
DescribeSpotPriceHistory), launch with failover to the next offer, termination and reaping."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from dstack.backends.aws import catalog, placement, reservations
from dstack.backends.aws import logs as cw
from dstack.backends.aws import secrets as sm
from dstack.backends.aws.errors import denied_fix, is_denied
from dstack.backends.aws.models import AWSBackendConfig
from dstack.backends.aws.permissions import OptionalPermissions
from dstack.backends.aws.resources import AWSResources
from dstack.backends.aws.session import Clients, describe, error_code
from dstack.backends.aws.volumes import EBSVolumes
from dstack.backends.base import (
    BackendContext,
    Compute,
    InstanceCheck,
    JobLaunch,
    LaunchedInstance,
    LaunchError,
    LaunchIntent,
    ProvisionedVolume,
    Requirements,
    SSHJump,
    cloud_gaps,
    cloud_ssh_extras,
)
from dstack.backends.bootstrap import agent_package, agent_package_key, default_image, user_data
from dstack.core.runs import LogEvent, Offer
from dstack.storage.s3 import S3Storage

# Errors after which the next offer may well work.
CAPACITY_ERRORS = {
    "InsufficientInstanceCapacity", "SpotMaxPriceTooLow", "Unsupported", "InstanceLimitExceeded",
    "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "InsufficientFreeAddressesInSubnet",
    "InsufficientCapacityOnHost", "UnfulfillableCapacity",
}
TYPES_TTL = 3600.0
CHECK_INTERVAL = 5.0
# EC2 is eventually consistent: for a while after RunInstances, Describe/TerminateInstances may answer
# InvalidInstanceID.NotFound for an instance that exists. Within this many seconds of the launch,
# NotFound means "not known yet", not "gone".
NOT_FOUND_GRACE = 180.0
# How long a type EC2 called Unsupported in the subnet's zone stays out of the offers.
UNSUPPORTED_TTL = 6 * 3600
# GPUs in the catalog that our images cannot drive: name -> what it is.
UNDRIVEN_GPUS = {"V100": "V100 (p3/p3dn, Volta)", "RadeonProV520": "Radeon Pro V520 (g4ad, AMD)",
                 "T4G": "T4g (g5g, arm64)"}
# What EC2 answers while a new instance profile (or its role) has not propagated yet.
_PROPAGATION_MESSAGES = ("iamInstanceProfile", "Invalid IAM Instance Profile", "has no associated IAM Roles",
                         "is not authorized to perform: iam:PassRole")
SPOT_TTL = 600.0
DEFAULT_DISK_GB = catalog.DEFAULT_DISK_GB
_LIVE_STATES = ["pending", "running", "stopping", "stopped"]


def _young(instance: LaunchedInstance) -> bool:
    launched = instance.data.get("launched_at")
    return isinstance(launched, (int, float)) and time.time() - launched < NOT_FOUND_GRACE


class AWSCompute(Compute):
    BOOT_TIMEOUT = 900.0
    TYPE = "aws"

    def __init__(self, config: AWSBackendConfig, ctx: BackendContext) -> None:
        self.config = config
        self.ctx = ctx
        self.clients = Clients(config)
        self.resources = AWSResources(config, self.clients)
        self.logs = cw.CloudWatchLogs(self.clients.logs)
        self.storage = S3Storage(config.bucket, config.region, client=self.clients.s3)
        self._types: tuple[float, list[catalog.TypeInfo]] | None = None
        self._spot: tuple[float, dict[str, float]] | None = None
        self._published: set[str] = set()
        self._unsupported_here: dict[str, float] = {}  # instance type -> when EC2 said Unsupported
        self._checked: dict[str, float] = {}
        self._lock = threading.Lock()
        self.volumes = EBSVolumes(ec2=self.clients.ec2, region=config.region, bucket=config.bucket,
                                  tags=self.resources.tags(), default_zone=self.resources.default_zone)
        self.permissions = OptionalPermissions(ec2=self.clients.ec2, region=config.region)
        self.reservations = reservations.Reservations(self.clients.ec2)

    # --- offers ------------------------------------------------------------------------------
    def unsupported(self, requirements: Requirements) -> str | None:
        if requirements.regions and self.config.region not in requirements.regions:
            return f"the backend's region is {self.config.region}"
        gap = cloud_gaps(requirements)
        if gap:
            return gap
        if requirements.reservation:
            # Its type and zone: ec2:DescribeCapacityReservations, the optional `reservations` statement.
            why = self.permissions_gap(features={"reservations"}) or reservations.unusable(
                self.reservations.get(requirements.reservation), requirements.reservation, self.config.region,
                self.resources.subnet_zone_of_config() if self.config.subnet else None)
            if why:
                return f"reservation: {why}"
        zones = requirements.availability_zones
        if zones:
            in_region = [z for z in zones if z.startswith(self.config.region)]
            if not in_region:
                return f"none of availability_zones ({', '.join(zones)}) is in the backend's region " \
                       f"{self.config.region}"
            if self.config.subnet:
                zone = self.resources.subnet_zone_of_config()
                if zone not in zones:
                    return f"the backend's subnet {self.config.subnet} is in {zone}, not in availability_zones"
        if requirements.resources.cpu_arch == "arm":
            return "the AWS backend's images are x86_64: Graviton (arm) types are not offered"
        gpu = requirements.resources.gpu
        if gpu and gpu.vendor not in (None, "nvidia"):
            return f"the AWS backend offers NVIDIA GPUs only (its images have NVIDIA's driver), not {gpu.vendor}"
        if gpu and gpu.name and self._default_gpu_image():
            undriven = [n for n in gpu.name if n in UNDRIVEN_GPUS]
            if undriven and len(undriven) == len(gpu.name):
                return (f"{', '.join(UNDRIVEN_GPUS[n] for n in undriven)}: the default GPU image (ECS-optimized "
                        "AL2023, NVIDIA Turing or newer, x86_64) cannot drive it; set gpu_ami_name to an image "
                        "that can")
        return None

    def _default_gpu_image(self) -> bool:
        return self.config.gpu_ami_name == type(self.config).model_fields["gpu_ami_name"].default

    def get_offers(self, requirements: Requirements) -> list[Offer]:
        prices = catalog.load().get(self.config.region, {})
        spot = self._spot_prices() if requirements.spot_policy != "on-demand" else {}
        offers = []
        # EBS volumes are sized to the request (at least DEFAULT_DISK_GB), so any size is on offer.
        disk = requirements.resources.disk
        disk_gb = max(DEFAULT_DISK_GB, disk.size.min or 0) if disk else DEFAULT_DISK_GB
        with self._lock:
            now = time.monotonic()
            skipped = {t for t, at in self._unsupported_here.items() if now - at < UNSUPPORTED_TTL}
        reserved = self.reservations.get(requirements.reservation) if requirements.reservation else None
        for info in self._instance_types():
            if info.name in skipped or (reserved and info.name != reserved["InstanceType"]):
                continue
            info = catalog.TypeInfo(info.name, info.resources.model_copy(update={"disk_gb": disk_gb}))
            item = prices.get(info.name)
            if item is not None and item.price is not None and requirements.spot_policy != "spot":
                offers.append(Offer(backend=self.TYPE, region=self.config.region, instance_type=info.name,
                                    resources=info.resources, price=item.price))
            spot_price = spot.get(info.name)
            if spot_price is not None and requirements.spot_policy != "on-demand" and not reserved:
                offers.append(Offer(backend=self.TYPE, region=self.config.region, instance_type=info.name,
                                    resources=info.resources.model_copy(update={"spot": True}), price=spot_price,
                                    spot=True))
        return offers

    def _instance_types(self) -> list[catalog.TypeInfo]:
        with self._lock:
            if self._types and time.monotonic() - self._types[0] < TYPES_TTL:
                return self._types[1]
        names = sorted(catalog.load().get(self.config.region, {}))
        infos: list[catalog.TypeInfo] = []
        try:
            paginator = self.clients.ec2.get_paginator("describe_instance_types")
            for i in range(0, len(names), 100):
                filters = [{"Name": "instance-type", "Values": names[i:i + 100]},
                           {"Name": "processor-info.supported-architecture", "Values": ["x86_64"]}]
                for page in paginator.paginate(Filters=filters):
                    for raw in page["InstanceTypes"]:
                        if catalog.drivable(raw, default_image=self._default_gpu_image()):
                            infos.append(catalog.type_info(raw))
        except (ClientError, BotoCoreError) as exc:
            from dstack.core.errors import BackendError

            raise BackendError(f"cannot list EC2 instance types in {self.config.region}: {describe(exc)}") from exc
        with self._lock:
            self._types = (time.monotonic(), infos)
        return infos

    def _spot_prices(self) -> dict[str, float]:
        with self._lock:
            if self._spot and time.monotonic() - self._spot[0] < SPOT_TTL:
                return self._spot[1]
        names = sorted(catalog.load().get(self.config.region, {}))
        prices: dict[str, float] = {}
        try:
            paginator = self.clients.ec2.get_paginator("describe_spot_price_history")
            for page in paginator.paginate(ProductDescriptions=["Linux/UNIX"], StartTime=datetime.now(UTC),
                                           Filters=[{"Name": "instance-type", "Values": names}]):
                for row in page["SpotPriceHistory"]:
                    price = float(row["SpotPrice"])
                    prices[row["InstanceType"]] = min(price, prices.get(row["InstanceType"], price))
        except (ClientError, BotoCoreError):
            return {}  # no spot offers rather than no offers at all
        with self._lock:
            self._spot = (time.monotonic(), prices)
        return prices

    # --- network volumes (backends/aws/volumes.py) -------------------------------------------
    EXCLUSIVE_VOLUMES = True

    def volumes_unsupported(self, *, region: str | None = None) -> str | None:
        if region and region != self.config.region:
            return f"the project's AWS backend is in {self.config.region}, not {region}"
        return None

    def permissions_gap(self, *, features: set[str]) -> str | None:
        return self.permissions.permissions_gap(features, self.config.bucket)

    def create_volume(self, *, project: str, name: str, region: str, availability_zone: str | None,
                      size_gb: float, tags: dict[str, str], request_id: str) -> ProvisionedVolume:
        return self.volumes.create(project=project, name=name, availability_zone=availability_zone,
                                   size_gb=size_gb, tags=tags, request_id=request_id)

    def register_volume(self, *, region: str, volume_id: str) -> ProvisionedVolume:
        return self.volumes.register(volume_id=volume_id)

    def volume_state(self, *, volume: ProvisionedVolume) -> ProvisionedVolume:
        return self.volumes.state(volume)

    def attach_volume(self, *, volume: ProvisionedVolume, instance: LaunchedInstance, device: str) -> bool:
        return self.volumes.attach(volume, instance, device)

    def detach_volume(self, *, volume: ProvisionedVolume, instance_id: str) -> bool:
        return self.volumes.detach(volume, instance_id)

    def delete_volume(self, *, volume: ProvisionedVolume) -> None:
        self.volumes.delete(volume)

    def volume_mount(self, *, volume: ProvisionedVolume, name: str, device: str) -> dict[str, Any]:
        return self.volumes.mount(volume, device)

    # --- launch ------------------------------------------------------------------------------
    def fleets_unsupported(self) -> str | None:
        return None

    def multinode_unsupported(self) -> str | None:
        return None

    def clusters_unsupported(self) -> str | None:
        return self.permissions_gap(features={"clusters"})

    def delete_placement_group(self, *, name: str) -> None:
        placement.delete_group(self.clients.ec2, name=name)

    def prepare_job(self, job: JobLaunch) -> dict[str, Any]:
        group = cw.job_group(self.config.bucket, job.project)
        stream = job.job_prefix.split("/runs/", 1)[-1].split("/", 1)[-1].replace("/jobs/", "/")
        runners = cw.runner_group(self.config.bucket, job.project)
        try:
            self.logs.ensure_stream(group, stream)
            self.logs.ensure_stream(runners, stream)
            self._publish_agent()
            ids = sm.sync(self.clients.secretsmanager, bucket=self.config.bucket, project=job.project,
                          secrets=job.secrets) if job.secrets else {}
        except (ClientError, BotoCoreError) as exc:
            if is_denied(exc):
                raise LaunchError(f"{describe(exc)}. {denied_fix(exc, bucket=self.config.bucket)}",
                                  backend_wide=True) from exc
            raise LaunchError(f"could not prepare the job: {describe(exc)}") from exc
        extras: dict[str, Any] = {
            "logs": {"type": "cloudwatch", "group": group, "stream": stream, "region": self.config.region},
            "runner_logs": {"type": "cloudwatch", "group": runners, "stream": stream, "region": self.config.region},
            "terminate": {"type": "aws", "region": self.config.region},
            # A job on the host network (a multi-node task's) is kept from the instance role's credentials.
            "metadata_guard": True,
        }
        extras.update(cloud_ssh_extras(job))
        if not job.image:  # every cloud job runs in a container
            extras["image"] = default_image(job.python)
        if ids:
            extras["secrets_source"] = {"type": "aws", "region": self.config.region, "ids": ids}
        return extras

    def _publish_agent(self) -> str:
        data, digest = agent_package()
        if digest not in self._published:
            key = agent_package_key(digest)
            if not self.storage.exists(key):
                self.storage.put(key, data)
            self._published.add(digest)
        return digest

    def launch(self, *, job: JobLaunch, offer: Offer) -> LaunchedInstance:
        try:
            return self._launch(job, offer)
        except ClientError as exc:
            code = error_code(exc)
            if code == "Unsupported" and self.config.subnet:
                # The subnet fixes the zone: this type is not there, today or for the next runs.
                with self._lock:
                    self._unsupported_here[offer.instance_type] = time.monotonic()
                raise LaunchError(f"{offer.instance_type} is not offered in {self.resources.subnet_zone} "
                                  f"(the zone of subnet {self.config.subnet}); not tried there again for "
                                  f"{UNSUPPORTED_TTL // 3600:.0f} h") from exc
            if code in CAPACITY_ERRORS:
                raise LaunchError(describe(exc)) from exc
            if is_denied(exc):  # no other offer of this backend can work either: say what to fix, once
                raise LaunchError(f"{describe(exc)}. {denied_fix(exc, bucket=self.config.bucket)}",
                                  backend_wide=True) from exc
            raise LaunchError(f"launch failed: {describe(exc)}") from exc
        except BotoCoreError as exc:
            raise LaunchError(f"launch failed: {exc}") from exc

    def _launch(self, job: JobLaunch, offer: Offer) -> LaunchedInstance:
        gpu = bool(offer.resources.gpus)
        profile = self.resources.instance_profile()
        vpc_id, subnet = self.resources.network()
        group = self.resources.security_group(vpc_id)
        image_id, root_device = self.resources.image(gpu)
        script = user_data(storage_url=self.storage.url, bucket=self.config.bucket, region=self.config.region,
                           job_prefix=job.job_prefix, job_id=job.job_id, package_digest=self._publish_agent(),
                           ssh_public_keys=job.ssh_public_keys, fleet_instance=job.fleet_instance)
        tags = [*self.resources.tags(), {"Key": "dstack_project", "Value": job.project},
                {"Key": "dstack_run", "Value": job.run_name}, {"Key": "dstack_job_id", "Value": job.job_id},
                {"Key": "Name", "Value": f"dstack-{job.run_name}"}]
        if job.fleet:
            tags.append({"Key": "dstack_fleet", "Value": job.fleet})
        taken = {t["Key"] for t in tags}  # the backend's and dstack's own tags win a conflict (as upstream)
        tags += [{"Key": k, "Value": v} for k, v in job.tags.items() if k not in taken]
        request: dict[str, Any] = {
            "ImageId": image_id, "InstanceType": offer.instance_type, "MinCount": 1, "MaxCount": 1,
            "IamInstanceProfile": {"Name": profile}, "UserData": script,
            "InstanceInitiatedShutdownBehavior": "terminate",
            # IMDSv2 only, one hop: the host's agent can get the role's credentials, a container cannot.
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
            "BlockDeviceMappings": [{"DeviceName": root_device, "Ebs": {
                "VolumeSize": int(max(DEFAULT_DISK_GB, offer.resources.disk_gb or 0)), "VolumeType": "gp3",
                "DeleteOnTermination": True}}],
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        zones = [z for z in job.availability_zones or [] if z.startswith(self.config.region)]
        reserved = self.reservations.get(job.reservation) if job.reservation else None
        if reserved:  # launched into the reservation, in its zone
            zones = [reserved["AvailabilityZone"]]
            request["CapacityReservationSpecification"] = {
                "CapacityReservationTarget": {"CapacityReservationId": job.reservation}}
        volume_zones = {v.availability_zone for v in job.volumes if v.availability_zone}
        if volume_zones:  # where its volumes are (the plan checked they are in one zone)
            zones = sorted(volume_zones)
        if zones and not subnet:  # with a subnet, its zone is checked at plan time (`unsupported`)
            request["Placement"] = {"AvailabilityZone": zones[0]}
        if job.placement_group:
            placement.ensure_group(self.clients.ec2, name=job.placement_group, tags=self.resources.tags())
            request["Placement"] = {**request.get("Placement", {}), "GroupName": job.placement_group}
        if subnet:
            request["NetworkInterfaces"] = [{"DeviceIndex": 0, "SubnetId": subnet, "Groups": [group],
                                             "AssociatePublicIpAddress": self.resources.subnet_public_ip}]
        else:
            request["SecurityGroupIds"] = [group]
        if offer.spot:
            request["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        instance = self._run_instances(request)
        instance_id = instance["InstanceId"]
        # The agent reads this at the end to terminate its own instance.
        self.storage.put_json(f"{job.job_prefix}/instance.json", {"instance_id": instance_id,
                                                                  "region": self.config.region})
        return LaunchedInstance(instance_id=instance_id, region=self.config.region, data={
            "instance_id": instance_id, "private_ip": instance.get("PrivateIpAddress"),
            "subnet": instance.get("SubnetId"), "spot": offer.spot, "launched_at": time.time(),
            "availability_zone": (instance.get("Placement") or {}).get("AvailabilityZone")})

    def _run_instances(self, request: dict[str, Any]) -> dict[str, Any]:
        # A new instance profile takes a few seconds to be usable by EC2: every documented propagation
        # answer is retried with a bounded backoff (and is not the offer's failure).
        deadline = time.monotonic() + 90
        delay = 1.0
        while True:
            try:
                return self.clients.ec2.run_instances(**request)["Instances"][0]
            except ClientError as exc:
                propagating = (error_code(exc) in ("InvalidParameterValue", "InvalidParameterCombination",
                                                   "UnauthorizedOperation")
                               and any(m in str(exc) for m in _PROPAGATION_MESSAGES))
                if not propagating or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(10.0, delay * 2)

    def find_launched(self, *, intent: LaunchIntent) -> LaunchedInstance | None:
        # In any state: a short job may have run and its agent terminated the instance already; the
        # reconciler then finishes the job from what the agent left in the bucket.
        pages = self.clients.ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "tag:dstack_bucket", "Values": [self.config.bucket]},
            {"Name": "tag:dstack_job_id", "Values": [intent.job_id]}])
        found = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        if not found:
            return None
        inst = max(found, key=lambda i: i["LaunchTime"])
        return LaunchedInstance(instance_id=inst["InstanceId"], region=self.config.region, data={
            "instance_id": inst["InstanceId"], "private_ip": inst.get("PrivateIpAddress"),
            "subnet": inst.get("SubnetId"), "spot": intent.offer.spot, "launched_at": inst["LaunchTime"].timestamp()})

    def start_timeout_hint(self, *, instance: LaunchedInstance) -> str | None:
        if not self.config.subnet:
            return None
        return (f"subnet {self.config.subnet} may give it no way out: the agent must reach S3 and CloudWatch "
                "(a public IP and an internet gateway, a NAT gateway, or VPC endpoints)")

    def delete_secret(self, *, project: str, name: str) -> None:
        try:
            sm.delete(self.clients.secretsmanager, bucket=self.config.bucket, project=project, name=name)
        except (ClientError, BotoCoreError) as exc:
            from dstack.core.errors import BackendError

            raise BackendError(f"cannot delete the secret from Secrets Manager: {describe(exc)}") from exc

    # --- following ---------------------------------------------------------------------------
    def check_instance(self, *, instance: LaunchedInstance) -> InstanceCheck:
        """A spot interruption (or any termination dstack did not ask for) fails the job at once,
        as `interrupted`, instead of after the heartbeat timeout."""
        now = time.monotonic()
        if now - self._checked.get(instance.instance_id, -1e9) < CHECK_INTERVAL:
            return InstanceCheck()
        self._checked[instance.instance_id] = now
        try:
            reservations = self.clients.ec2.describe_instances(InstanceIds=[instance.instance_id])["Reservations"]
        except ClientError as exc:
            if error_code(exc) == "InvalidInstanceID.NotFound" and not _young(instance):
                return InstanceCheck(failure="instance lost")
            return InstanceCheck()  # not known yet (eventual consistency), or a transient error
        except BotoCoreError:
            return InstanceCheck()
        inst = reservations[0]["Instances"][0] if reservations else None
        if inst is None:
            return InstanceCheck() if _young(instance) else InstanceCheck(failure="instance lost")
        state = inst["State"]["Name"]
        if state in ("shutting-down", "terminated", "stopping", "stopped"):
            reason = (inst.get("StateReason") or {}).get("Message") or state
            return InstanceCheck(failure=f"interrupted: the instance is {state} ({reason})")
        # Its addresses, recorded once EC2 has them (a public IP only where the subnet gives one).
        addresses = {"public_ip": inst.get("PublicIpAddress"), "private_ip": inst.get("PrivateIpAddress")}
        data = None
        if any(addresses.values()) and any(instance.data.get(k) != v for k, v in addresses.items()):
            data = {**instance.data, **addresses}
        return InstanceCheck(booting=state == "pending", data=data)

    def ssh_jump(self, *, instance: LaunchedInstance) -> SSHJump | None:
        from dstack.core.errors import InvalidStateError

        public, private = instance.data.get("public_ip"), instance.data.get("private_ip")
        if public:
            return SSHJump(host=public, user="ec2-user")
        if private and self.config.proxy_jump:
            return SSHJump(host=private, user="ec2-user", via=self.config.proxy_jump)
        if not private:
            raise InvalidStateError(f"instance {instance.instance_id} has no address yet",
                                    fix="Wait until the run is running; `dstack ps` shows its status")
        raise InvalidStateError(
            f"instance {instance.instance_id} has no public IP (subnet {instance.data.get('subnet') or '?'} "
            f"gives none), only the private {private}",
            fix="Set the AWS backend's `proxy_jump` to an SSH host in that VPC (docs/attach.md), "
                "or use a subnet that assigns public IPs")

    # --- teardown ----------------------------------------------------------------------------
    def terminate(self, *, instance: LaunchedInstance) -> None:
        """Raises until EC2 confirms (the reconciler tries again): a young instance's NotFound means EC2
        does not know it yet, and swallowing it would leave the instance running unowned."""
        try:
            self.clients.ec2.terminate_instances(InstanceIds=[instance.instance_id])
        except ClientError as exc:
            if error_code(exc) != "InvalidInstanceID.NotFound":
                raise
            if _young(instance):
                raise LaunchError(f"EC2 does not know instance {instance.instance_id} yet; "
                                  "terminating it again shortly") from exc

    def reap(self, *, live_instance_ids: set[str], launching_job_ids: frozenset[str] = frozenset()) -> list[str]:
        cutoff = datetime.now(UTC) - timedelta(seconds=self.ctx.reaper_grace)
        orphans = []
        paginator = self.clients.ec2.get_paginator("describe_instances")
        for page in paginator.paginate(Filters=[
                {"Name": "tag:dstack_bucket", "Values": [self.config.bucket]},
                {"Name": "tag:dstack_project", "Values": [self.ctx.project]},
                {"Name": "instance-state-name", "Values": _LIVE_STATES}]):
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    job_id = next((t["Value"] for t in inst.get("Tags") or [] if t["Key"] == "dstack_job_id"), None)
                    if inst["InstanceId"] not in live_instance_ids and inst["LaunchTime"] < cutoff \
                            and job_id not in launching_job_ids:
                        orphans.append(inst["InstanceId"])
        if orphans:
            self.clients.ec2.terminate_instances(InstanceIds=orphans)
        return orphans

    # --- logs --------------------------------------------------------------------------------
    def read_logs(self, *, job_prefix: str, spec_extras: dict[str, Any], next_token: str | None
                  ) -> tuple[list[LogEvent], str, bool]:
        logs = spec_extras.get("logs")
        if not logs:
            return [], next_token or "", False
        return self.logs.read(logs["group"], logs["stream"], next_token)


COMPUTE_CLASS = AWSCompute
