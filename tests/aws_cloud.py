"""Plays EC2 for tests: every instance moto launches becomes a VM host that runs its user data
with the credentials of its instance profile (as IMDS would hand them out), with the image's sshd
(user ec2-user), and is powered off when moto says it is terminated.

An EBS volume attached to a booted instance (as /dev/sdf…) becomes a loop device over a sparse
file that outlives the instances (the volume's data), linked where a Nitro instance's udev links an
EBS disk: /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol… (the VMs share this machine's /dev).

The network rule: the product never connects to an address moto made up. The public IP moto gives
an instance is its VM host's address (moto runs in this process: its IP generator is replaced while
this cloud runs), so `dstack attach` reaches the VM; private IPs stay moto's."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import moto.ec2.models.elastic_network_interfaces as moto_eni

from tests.aws_harness import MotoAWS
from tests.fault_proxy import FaultProxy
from tests.vmhost import VMHost

MOTO_ROLE_WORKAROUND = {
    # moto wrongly denies Logs and Secrets Manager resource ARNs; the role's own policy is checked
    # against every call the agent makes in tests/backends/aws/test_iam_policy.py.
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["logs:PutLogEvents", "logs:CreateLogStream",
                                                 "secretsmanager:GetSecretValue"], "Resource": "*"}],
}


# http.server's HTTPServer looks its address up in DNS before it listens (none in a VM): a plain
# TCP server instead.
METADATA_STUB = """\
import http.server, socketserver
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"metadata")
    do_PUT = do_GET
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("169.254.169.254", 80), Handler).serve_forever()
"""


@dataclass
class Booted:
    instance_id: str
    host: VMHost
    started_at: float
    tags: dict[str, str] = field(default_factory=dict)
    profile: str = ""


class FakeEC2Cloud:
    def __init__(self, aws: MotoAWS, region: str, workdir: Path) -> None:
        self.aws = aws
        self.region = region
        self.workdir = workdir
        self.booted: dict[str, Booted] = {}
        self.errors: list[str] = []
        # What a test adds to every VM: environment (e.g. its container runtime's settings) and ports of
        # services here that the VM reaches on its own 127.0.0.1 (e.g. a registry).
        self.vm_env: dict[str, str] = {}
        self.vm_loopback_ports: list[int] = []
        # A FaultProxy (tests/fault_proxy.py) between the VMs and the AWS stand-in: the VMs still address
        # 127.0.0.1:<moto's port>, which then reaches the proxy.
        self.vm_aws_proxy: FaultProxy | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.disks: dict[str, str] = {}  # EBS volume id -> the loop device standing in for it
        # A bridge of this machine that every VM joins with its instance's private IP (moto's), as the
        # instances of one VPC reach each other at those addresses.
        self.private_bridge: str | None = None
        # A stand-in for the instance metadata service in every VM (169.254.169.254:80, answering 200),
        # so that a test can tell who may reach it.
        self.metadata_service = False

    def start(self) -> FakeEC2Cloud:
        self._prepared: dict[str, VMHost] = {}
        self._moto_public_ip = moto_eni.random_public_ip
        moto_eni.random_public_ip = self._public_ip_of_a_new_vm
        self._thread.start()
        return self

    def _public_ip_of_a_new_vm(self) -> str:
        host = VMHost(self.workdir / f"vm-{len(self._prepared)}")
        self._prepared[host.vm_ip] = host
        return host.vm_ip

    def stop(self) -> None:
        moto_eni.random_public_ip = self._moto_public_ip
        self._stop.set()
        self._thread.join(timeout=10)
        for booted in self.booted.values():
            booted.host.snapshot()  # left in the test's tmp dir, for a failure's post-mortem
            booted.host.destroy()
        for volume_id in list(self.disks):
            self._detach_disk(volume_id)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._step()
            except Exception:  # reported by the test, which asserts no errors; the trace says where
                self.errors.append(traceback.format_exc())

    def _step(self) -> None:
        ec2 = self.aws.client("ec2", self.region)
        for reservation in ec2.describe_instances()["Reservations"]:
            for inst in reservation["Instances"]:
                iid, state = inst["InstanceId"], inst["State"]["Name"]
                if iid not in self.booted and state in ("pending", "running"):
                    self._boot(inst)
                elif iid in self.booted and state in ("shutting-down", "terminated"):
                    self.booted[iid].host.power_off()
        attached = {}
        for volume in ec2.describe_volumes()["Volumes"]:
            for attachment in volume.get("Attachments") or []:
                # Data volumes only (the root volume of every instance is attached as its image says).
                if attachment["InstanceId"] in self.booted and attachment["Device"].startswith("/dev/sd"):
                    attached[volume["VolumeId"]] = volume["Size"]
        for volume_id, size_gb in attached.items():
            if volume_id not in self.disks:
                self._attach_disk(volume_id, size_gb)
        for volume_id in [v for v in self.disks if v not in attached]:
            self._detach_disk(volume_id)

    def _disk_link(self, volume_id: str) -> Path:
        return Path("/dev/disk/by-id") / f"nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"

    def _attach_disk(self, volume_id: str, size_gb: int) -> None:
        backing = self.workdir / "ebs" / f"{volume_id}.img"
        backing.parent.mkdir(parents=True, exist_ok=True)
        if not backing.exists():
            with open(backing, "wb") as f:
                f.truncate(size_gb << 30)  # sparse: costs what is written
        device = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True, capture_output=True,
                                text=True).stdout.strip()
        link = self._disk_link(volume_id)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        os.symlink(device, link)
        self.disks[volume_id] = device

    def _detach_disk(self, volume_id: str) -> None:
        device = self.disks.pop(volume_id)
        self._disk_link(volume_id).unlink(missing_ok=True)
        # Autoclear: the loop device goes once the VM that mounted it is gone.
        subprocess.run(["losetup", "-d", device], capture_output=True)

    def _boot(self, inst: dict) -> None:
        iid = inst["InstanceId"]
        ec2 = self.aws.client("ec2", self.region)
        raw = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"].get("Value")
        if not raw:
            return
        script = base64.b64decode(raw).decode()
        # As cloud-init runs user data: no HOME.
        env = {"AWS_EC2_METADATA_DISABLED": "true", "LANG": "C.UTF-8"}
        profile = (inst.get("IamInstanceProfile") or {}).get("Arn", "")
        if profile:
            env.update(self._role_credentials(profile.rsplit("/", 1)[-1]))
        host = self._prepared.pop(inst.get("PublicIpAddress") or "", None) or VMHost(self.workdir / iid)
        host.workdir = self.workdir / iid
        host.start()
        # The VM's own 127.0.0.1:PORT reaches moto, so URLs the server presigned (for 127.0.0.1) work in it too.
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{self.aws.port}"
        self.booted[iid] = Booted(iid, host, time.monotonic(), {t["Key"]: t["Value"] for t in inst.get("Tags", [])},
                                  profile)
        env.update(self.vm_env)
        if self.private_bridge and inst.get("PrivateIpAddress"):
            # One L2 network for the private range moto draws from (its addresses ignore the subnets' CIDRs).
            private = inst["PrivateIpAddress"]
            prefix = 8 if private.startswith("10.") else 12 if private.startswith("172.") else 16
            host.join_bridge(self.private_bridge, f"{private}/{prefix}")
        init = []
        if self.metadata_service:
            host.workdir.mkdir(parents=True, exist_ok=True)
            (host.workdir / "metadata.py").write_text(METADATA_STUB)
            init = ["ip addr add 169.254.169.254/32 dev lo",
                    f"setsid {sys.executable} {host.workdir}/metadata.py >{host.workdir}/metadata.log 2>&1 < /dev/null &"]
        host.boot(script, env, sshd=True, ssh_user="ec2-user", loopback_forwards=[(self.aws.port, self.vm_aws_proxy.port if self.vm_aws_proxy else self.aws.port),
                                   *[(p, p) for p in self.vm_loopback_ports]], init=init)

    def _role_credentials(self, profile_name: str) -> dict[str, str]:
        """What IMDS would give the instance: temporary keys of its profile's role."""
        with self.aws.unenforced():
            iam = self.aws.client("iam")
            role = iam.get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]["Roles"][0]
            iam.put_role_policy(RoleName=role["RoleName"], PolicyName="moto-false-deny-workaround",
                                PolicyDocument=json.dumps(MOTO_ROLE_WORKAROUND))
            creds = self.aws.client("sts", self.region).assume_role(
                RoleArn=role["Arn"], RoleSessionName="instance")["Credentials"]
        return {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
                "AWS_SESSION_TOKEN": creds["SessionToken"]}
