"""Plays Lambda Cloud's machines: when the fake moves an instance to `active`, a VM host (with
sshd) boots it by running the user data the backend sent; its address becomes the instance's `ip`.
The VM gets no AWS keys and no endpoint settings: only the loopback forward that lets the
presigned S3 URLs (which name the test's S3 endpoint) work inside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.aws_harness import MotoAWS
from tests.fault_proxy import FaultProxy, s3_checks_signing_region, s3_refuses_sigv2
from tests.lambda_fake import FakeLambda
from tests.vmhost import VMHost


class LambdaVMs:
    def __init__(self, fake: FakeLambda, aws: MotoAWS, workdir: Path) -> None:
        self.fake, self.aws, self.workdir = fake, aws, workdir
        self.hosts: dict[str, VMHost] = {}
        # What a test adds to every VM: environment and ports of services here on the VM's 127.0.0.1.
        self.vm_env: dict[str, str] = {}
        self.vm_loopback_ports: list[int] = []
        # A FaultProxy (tests/fault_proxy.py) between the VMs and the AWS stand-in: the VMs still address
        # 127.0.0.1:<moto's port>, which then reaches the proxy.
        # By default it is as strict as S3 where moto is not: SigV2 is refused, and so is a signature
        # for another region than the bucket's.
        regions = s3_checks_signing_region(self._bucket_region)
        self.vm_aws_proxy: FaultProxy | None = FaultProxy(aws.port, lambda r: s3_refuses_sigv2(r) or regions(r))
        self._regions: dict[str, str | None] = {}
        self.snapshots: dict[str, Path] = {}
        fake.on_active = self.on_active
        fake.on_gone = self.on_gone

    def _bucket_region(self, bucket: str) -> str | None:
        if bucket not in self._regions:
            try:
                location = self.aws.client("s3").get_bucket_location(Bucket=bucket).get("LocationConstraint")
                self._regions[bucket] = location or "us-east-1"
            except Exception:  # noqa: BLE001 - not a bucket (another path): no opinion
                self._regions[bucket] = None
        return self._regions[bucket]

    def on_active(self, inst: dict[str, Any]) -> str:
        host = VMHost(self.workdir / inst["id"]).start()
        # As cloud-init runs user data: no HOME.
        env = {"LANG": "C.UTF-8"}
        # As Lambda does: the launch's registered SSH key is authorized for `ubuntu`.
        keys = [k["public_key"] for k in self.fake.ssh_keys if k["name"] in inst["ssh_key_names"]]
        env.update(self.vm_env)
        # Its file systems at their mount points: one directory here per file system, shared by every
        # instance that mounts it (as Lambda's NFS is), kept after they are gone.
        binds = []
        for fs in self.fake.file_systems.values():
            if fs["name"] in inst["file_system_names"]:
                data = self.workdir / "nfs" / fs["id"]
                data.mkdir(parents=True, exist_ok=True)
                data.chmod(0o777)
                binds.append((str(data), fs["mount_point"]))
        host.boot(self.fake.user_data[inst["id"]], env, sshd=True,
                  loopback_forwards=[(self.aws.port, self.vm_aws_proxy.port if self.vm_aws_proxy else self.aws.port),
                                   *[(p, p) for p in self.vm_loopback_ports]], authorized_keys=keys, binds=binds)
        self.hosts[inst["id"]] = host
        return host.vm_ip

    def on_gone(self, inst: dict[str, Any]) -> None:
        host = self.hosts.get(inst["id"])
        if host is not None:
            self.snapshots[inst["id"]] = host.snapshot()
            host.power_off()

    def stop(self) -> None:
        if self.vm_aws_proxy is not None:
            self.vm_aws_proxy.stop()
        for host in self.hosts.values():
            host.snapshot()  # left in the test's tmp dir, for a failure's post-mortem
            host.destroy()
