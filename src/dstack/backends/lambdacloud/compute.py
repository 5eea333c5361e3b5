"""Lambda Cloud instances: offers from /instance-types, launch where capacity is, follow the
instance, terminate. The instance holds no AWS keys: it gets presigned access to its own job's
prefix in the bucket, renewed over SSH for long jobs."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from dstack.backends.aws.configurator import _bucket_region
from dstack.backends.aws.session import describe
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
from dstack.backends.bootstrap import agent_package, agent_package_key, default_image
from dstack.backends.lambdacloud.api import LambdaAPI, LambdaAPIError
from dstack.backends.lambdacloud.configurator import s3_client
from dstack.backends.lambdacloud.models import LambdaBackendConfig
from dstack.backends.lambdacloud.userdata import user_data
from dstack.backends.lambdacloud.volumes import LambdaFileSystems
from dstack.core.errors import BackendError
from dstack.core.gpus import normalize_gpu_name
from dstack.core.hostkeys import pinned_ssh_options, write_known_hosts
from dstack.core.resources import GPU, InstanceResources
from dstack.core.runs import Offer
from dstack.core.sshkeys import server_key
from dstack.storage.s3 import S3Storage

# Lambda's RequestedTagEntry key (OpenAPI spec 1.8.3).
LAMBDA_TAG_KEY = re.compile(r"^[a-z][a-z0-9-:]{1,54}\Z")

KNOWN_REGIONS = [
    "europe-central-1", "asia-south-1", "australia-east-1", "me-west-1", "asia-northeast-1", "asia-northeast-2",
    "us-east-1", "us-west-2", "us-west-1", "us-south-1", "us-west-3", "us-midwest-1", "us-east-2", "us-south-2",
    "us-south-3", "us-east-3", "us-midwest-2",
]
TYPES_TTL = 20.0  # capacity changes quickly
CHECK_INTERVAL = 5.0
logger = logging.getLogger("dstack.backends.lambda")
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # the SigV4 limit
RENEW_BEFORE = timedelta(days=2)
SSH_USER = "ubuntu"


class LambdaCompute(Compute):
    # 8-GPU instances take 10-15 minutes to boot.
    BOOT_TIMEOUT = 1800.0
    TYPE = "lambda"

    def __init__(self, config: LambdaBackendConfig, ctx: BackendContext) -> None:
        self.config = config
        self.ctx = ctx
        self.api = LambdaAPI(config.api_key, config.base_url)
        self.file_systems = LambdaFileSystems(self.api)
        self._s3: Any = None
        self._region: str | None = None
        self._types: tuple[float, dict[str, Any]] | None = None
        self._quota_exceeded: dict[str, float] = {}
        self._checked: dict[str, float] = {}
        self._first_seen: dict[str, float] = {}
        self._ssh_key_name: str | None = None
        self._lock = threading.Lock()
        self.storage = _LazyS3Storage(self)

    # --- storage -----------------------------------------------------------------------------
    def s3(self) -> Any:
        with self._lock:
            if self._s3 is None:
                try:
                    location = s3_client(self.config).get_bucket_location(Bucket=self.config.bucket)
                except (ClientError, BotoCoreError) as exc:
                    raise BackendError(f"cannot reach bucket {self.config.bucket}: {describe(exc)}") from exc
                self._region = _bucket_region(location.get("LocationConstraint"))
                self._s3 = s3_client(self.config, self._region)
            return self._s3

    # --- offers ------------------------------------------------------------------------------
    def unsupported(self, requirements: Requirements) -> str | None:
        if requirements.spot_policy == "spot":
            return "Lambda Cloud has no spot instances (use spot_policy: auto or on-demand)"
        gap = cloud_gaps(requirements)
        if gap:
            return gap
        if requirements.availability_zones:
            return "Lambda Cloud has no availability zones (choose with `regions`)"
        if requirements.reservation:
            return "Lambda Cloud has no capacity reservations to name (reserved instances appear as ordinary offers)"
        bad_tags = [k for k, v in requirements.tags.items() if not LAMBDA_TAG_KEY.match(k) or len(v) > 128]
        if bad_tags:
            return (f"Lambda Cloud tags need keys of lowercase letters, digits, - and : (up to 55) and values of "
                    f"up to 128 characters: {', '.join(bad_tags)}")
        gpu = requirements.resources.gpu
        if gpu and gpu.vendor not in (None, "nvidia"):
            return f"Lambda Cloud has NVIDIA GPUs only, not {gpu.vendor}"
        if requirements.resources.cpu_arch == "arm" and not (gpu and gpu.name and "GH200" in gpu.name):
            return "Lambda Cloud's arm machines are GH200 only (ask for gpu: GH200)"
        if requirements.regions and not set(requirements.regions) & set(self.config.regions):
            return f"the backend's regions are {', '.join(self.config.regions)}"
        return None

    def _instance_types(self) -> dict[str, Any]:
        with self._lock:
            if self._types and time.monotonic() - self._types[0] < TYPES_TTL:
                return self._types[1]
        try:
            types = self.api.instance_types()
        except LambdaAPIError as exc:
            raise BackendError(f"Lambda Cloud: {exc}") from exc
        with self._lock:
            self._types = (time.monotonic(), types)
        return types

    def get_offers(self, requirements: Requirements) -> list[Offer]:
        offers = []
        now = time.monotonic()
        for name, item in self._instance_types().items():
            if now - self._quota_exceeded.get(name, -1e9) < 600:
                continue  # the account's quota for this type is used up; say so once, then skip it
            spec = item["instance_type"]
            resources = _resources(spec)
            for region in item["regions_with_capacity_available"]:
                if region["name"] in self.config.regions:
                    offers.append(Offer(backend=self.TYPE, region=region["name"], instance_type=name,
                                        resources=resources, price=spec["price_cents_per_hour"] / 100))
        return offers

    # --- launch ------------------------------------------------------------------------------
    def prepare_job(self, job: JobLaunch) -> dict[str, Any]:
        try:
            data, digest = agent_package()
            key = agent_package_key(digest)
            if not self.storage.exists(key):
                self.storage.put(key, data)
        except (ClientError, BotoCoreError) as exc:
            raise LaunchError(f"cannot write to bucket {self.config.bucket}: {describe(exc)}",
                              backend_wide=True) from exc
        extras: dict[str, Any] = cloud_ssh_extras(job)
        if not job.image:  # every cloud job runs in a container
            extras["image"] = default_image(job.python)
        return extras

    def access(self, job: JobLaunch | dict[str, Any], expires_in: int) -> dict[str, Any]:
        """Presigned access to exactly what the agent of this job reads and writes."""
        prefix = job["job_prefix"] if isinstance(job, dict) else job.job_prefix
        reads = job["read_keys"] if isinstance(job, dict) else job.read_keys
        s3 = self.s3()
        keys = [f"{prefix}/spec.json", f"{prefix}/stop.json", *reads]
        get = {k: s3.generate_presigned_url("get_object", Params={"Bucket": self.config.bucket, "Key": k},
                                            ExpiresIn=expires_in) for k in keys}
        post = s3.generate_presigned_post(self.config.bucket, f"{prefix}/${{filename}}",
                                          Conditions=[["starts-with", "$key", f"{prefix}/"],
                                                      ["content-length-range", 0, 5 * 2**30]],
                                          ExpiresIn=expires_in)
        expires_at = (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat()
        return {"get": get, "post": {**post, "prefix": f"{prefix}/"}, "expires_at": expires_at}

    def _ssh_key(self) -> str:
        with self._lock:
            if self._ssh_key_name:
                return self._ssh_key_name
        _, public = server_key(self.ctx.server_dir)
        name = "dstack-" + public.split()[1][-16:].replace("/", "_").replace("+", "-")
        if not any(k["name"] == name for k in self.api.ssh_keys()):
            self.api.add_ssh_key(name, public)
        with self._lock:
            self._ssh_key_name = name
        return name

    # --- network volumes: file systems (backends/lambdacloud/volumes.py) ------------------------
    def volumes_unsupported(self, *, region: str | None = None) -> str | None:
        return None

    def create_volume(self, *, project: str, name: str, region: str, availability_zone: str | None,
                      size_gb: float, tags: dict[str, str], request_id: str) -> ProvisionedVolume:
        return self.file_systems.create(name=name, region=region)  # Lambda's file systems have no size

    def register_volume(self, *, region: str, volume_id: str) -> ProvisionedVolume:
        found = self.file_systems.find(volume_id)
        if found.region != region:
            raise BackendError(f"Lambda file system {volume_id} is in {found.region}, not {region}")
        return found

    def volume_state(self, *, volume: ProvisionedVolume) -> ProvisionedVolume:
        return self.file_systems.find(volume.volume_id)

    def delete_volume(self, *, volume: ProvisionedVolume) -> None:
        self.file_systems.delete(volume)

    def volume_mount(self, *, volume: ProvisionedVolume, name: str, device: str) -> dict[str, Any]:
        return {"kind": "dir", "source": volume.data["mount_point"]}

    def launch(self, *, job: JobLaunch, offer: Offer) -> LaunchedInstance:
        _, digest = agent_package()
        expires_in = min(MAX_PRESIGN_SECONDS, (job.max_duration or MAX_PRESIGN_SECONDS) + 3600)
        try:
            access = self.access(job, expires_in)
            agent_url = self.s3().generate_presigned_url("get_object", Params={
                "Bucket": self.config.bucket, "Key": agent_package_key(digest)}, ExpiresIn=3600)
            script = user_data(job_id=job.job_id, job_prefix=job.job_prefix, access=access, agent_url=agent_url,
                               package_digest=digest, secrets=job.secrets, ssh_user=SSH_USER,
                               ssh_public_keys=job.ssh_public_keys)
            ids = self.api.launch(
                region_name=offer.region, instance_type_name=offer.instance_type, ssh_key_names=[self._ssh_key()],
                name=f"dstack-{job.run_name}"[:64], user_data=script,
                file_system_names=[v.data["name"] for v in job.volumes],
                tags=[{"key": "dstack-project", "value": job.project[:128]},
                      {"key": "dstack-job", "value": job.job_id},
                      *({"key": k, "value": v} for k, v in job.tags.items()
                        if k not in ("dstack-project", "dstack-job"))])
        except LambdaAPIError as exc:
            if exc.code == "global/quota-exceeded":
                self._quota_exceeded[offer.instance_type] = time.monotonic()
                raise LaunchError(f"quota exceeded for {offer.instance_type}: {exc.message}; not trying it again "
                                  "for 10 minutes (ask Lambda to raise the quota)", skip_instance_type=True) from exc
            if exc.code in ("global/invalid-api-key", "global/account-inactive"):
                raise LaunchError(str(exc), backend_wide=True) from exc
            with self._lock:
                self._types = None  # capacity changed under us: list again next time
            raise LaunchError(str(exc)) from exc
        except (ClientError, BotoCoreError) as exc:
            raise LaunchError(f"cannot presign bucket access: {describe(exc)}", backend_wide=True) from exc
        return LaunchedInstance(instance_id=ids[0], region=offer.region, data={
            "instance_id": ids[0], "region": offer.region, "ssh_user": SSH_USER, "ip": None,
            "access_expires_at": access["expires_at"], "job_prefix": job.job_prefix, "read_keys": job.read_keys,
            "job_id": job.job_id})

    def find_launched(self, *, intent: LaunchIntent) -> LaunchedInstance | None:
        for inst in self.api.instances():
            tags = {t["key"]: t["value"] for t in inst.get("tags") or []}
            if tags.get("dstack-job") == intent.job_id and inst["status"] not in ("terminated", "terminating"):
                region = (inst.get("region") or {}).get("name") or intent.offer.region
                # The access it was launched with is unknown here: renew it at the first check.
                return LaunchedInstance(instance_id=inst["id"], region=region, data={
                    "instance_id": inst["id"], "region": region, "ssh_user": SSH_USER, "ip": inst.get("ip"),
                    "access_expires_at": datetime.now(UTC).isoformat(), "job_prefix": intent.job_prefix,
                    "read_keys": intent.read_keys, "job_id": intent.job_id})
        return None

    def ssh_jump(self, *, instance: LaunchedInstance) -> SSHJump | None:
        from dstack.core.errors import InvalidStateError

        if not instance.data.get("ip"):
            raise InvalidStateError(f"instance {instance.instance_id} has no IP address yet",
                                    fix="Wait until the run is running; `dstack ps` shows its status")
        return SSHJump(host=instance.data["ip"], user=instance.data.get("ssh_user") or SSH_USER)

    # --- following ---------------------------------------------------------------------------
    def check_instance(self, *, instance: LaunchedInstance) -> InstanceCheck:
        now = time.monotonic()
        # Until its address is known (for `dstack attach`), look at every reconcile.
        if instance.data.get("ip") and now - self._checked.get(instance.instance_id, -1e9) < CHECK_INTERVAL:
            return InstanceCheck()
        self._checked[instance.instance_id] = now
        try:
            info = self.api.instance(instance.instance_id)
        except LambdaAPIError as exc:
            if exc.code == "global/object-does-not-exist":
                return InstanceCheck(failure="instance lost")
            return InstanceCheck()  # the API is unwell; heartbeats still decide
        status = info["status"]
        if status == "preempted":
            return InstanceCheck(failure="interrupted")
        if status in ("terminated", "terminating"):
            return InstanceCheck(failure="instance lost")
        if status == "unhealthy":
            return InstanceCheck(failure="interrupted: Lambda Cloud reports the instance unhealthy")
        data = None
        if info.get("ip") and info["ip"] != instance.data.get("ip"):
            data = {**instance.data, "ip": info["ip"]}
        if status == "booting":
            return InstanceCheck(data=data, booting=True)
        renewed = self._renew_access(instance, info)
        if renewed:
            data = {**(data or instance.data), "access_expires_at": renewed}
        return InstanceCheck(data=data)

    def _renew_access(self, instance: LaunchedInstance, info: dict[str, Any]) -> str | None:
        """A long job's presigned access is replaced over SSH before it expires."""
        expires = datetime.fromisoformat(instance.data["access_expires_at"])
        if expires - datetime.now(UTC) > RENEW_BEFORE or not info.get("ip"):
            return None
        host_keys = (self.storage.get_json(f"{instance.data['job_prefix']}/host_keys.json") or {}).get("keys")
        if not host_keys:
            return None  # never connect to a host whose key is not pinned; the agent publishes it at start
        access = self.access(instance.data, MAX_PRESIGN_SECONDS)
        path = f"/opt/dstack/jobs/{instance.data['job_id']}/access.json"
        key, _ = server_key(self.ctx.server_dir)
        known_hosts = write_known_hosts(self.ctx.server_dir / "data" / "ssh" / f"known_hosts-{instance.instance_id}",
                                        info["ip"], 22, host_keys)
        result = subprocess.run(
            ["ssh", "-i", str(key), *pinned_ssh_options(known_hosts),
             "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", f"{instance.data['ssh_user']}@{info['ip']}",
             f"S=; [ \"$(id -u)\" = 0 ] || S='sudo -n'; $S sh -c 'cat > {path}.new && chmod 600 {path}.new && "
             f"mv {path}.new {path}'"],
            input=json.dumps(access).encode(), capture_output=True, timeout=60)
        if result.returncode != 0:
            logger.warning("renewing the bucket access of %s over SSH failed: %s", instance.instance_id,
                           result.stderr.decode(errors="replace").strip().splitlines()[-1:])
            return None
        return access["expires_at"]

    # --- teardown ----------------------------------------------------------------------------
    def terminate(self, *, instance: LaunchedInstance) -> None:
        try:
            self.api.terminate([instance.instance_id])
        except LambdaAPIError as exc:
            if exc.code != "global/object-does-not-exist":
                raise BackendError(f"Lambda Cloud did not terminate {instance.instance_id}: {exc}") from exc

    def reap(self, *, live_instance_ids: set[str], launching_job_ids: frozenset[str] = frozenset()) -> list[str]:
        now = time.monotonic()
        orphans = []
        for inst in self.api.instances():
            tags = {t["key"]: t["value"] for t in inst.get("tags") or []}
            if tags.get("dstack-project") != self.ctx.project or "dstack-job" not in tags:
                continue
            if inst["status"] in ("terminated", "terminating") or inst["id"] in live_instance_ids \
                    or tags["dstack-job"] in launching_job_ids:
                self._first_seen.pop(inst["id"], None)
                continue
            # Lambda reports no launch time: count from when this server first saw it orphaned.
            first = self._first_seen.setdefault(inst["id"], now)
            if now - first >= self.ctx.reaper_grace:
                orphans.append(inst["id"])
        if orphans:
            self.api.terminate(orphans)
        return orphans


class _LazyS3Storage(S3Storage):
    """The bucket's region is looked up on first use, not when the backend is loaded."""

    def __init__(self, compute: LambdaCompute) -> None:
        self._compute = compute
        self.bucket = compute.config.bucket
        self.url = f"s3://{self.bucket}"

    @property
    def _s3(self) -> Any:  # type: ignore[override]
        return self._compute.s3()


def _resources(spec: dict[str, Any]) -> InstanceResources:
    specs = spec["specs"]
    gpus: list[GPU] = []
    if specs["gpus"]:
        match = re.match(r"^(.*?)\s*\((\d+)\s*GB", spec.get("gpu_description", ""))
        raw = match.group(1) if match else spec.get("gpu_description", "GPU")
        raw = raw.replace("Tesla ", "").replace("Quadro ", "").replace("RTX A", "A").strip()
        name = normalize_gpu_name(raw)
        gpus = [GPU(name=name, memory_gb=float(match.group(2)) if match else 0.0)] * specs["gpus"]
    return InstanceResources(cpus=specs["vcpus"], memory_gb=specs["memory_gib"], gpus=gpus,
                             disk_gb=specs["storage_gib"])


COMPUTE_CLASS = LambdaCompute
