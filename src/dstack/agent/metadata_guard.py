"""Keeps a job that shares the instance's network (a multi-node task) from the cloud's metadata
service, where the instance role's credentials are: one firewall rule rejects every packet to it
that does not carry the agent's mark (storage/sigv4.py sets it on its own requests; a container
cannot set marks without CAP_NET_ADMIN, which runtimes do not give it).

A job on the runtime's bridge network needs no rule: IMDSv2's hop limit of 1 already stops it.
If the rule cannot be put in place, a host-network job does not start (fail safe)."""

from __future__ import annotations

import shutil
import subprocess

METADATA_ADDRESS = "169.254.169.254"


def _rule() -> list[str]:
    """New connections only (the metadata service speaks TCP alone): what answers them is not refused.
    (The AWS client is imported here, not with the module: a local job's agent never needs it.)"""
    from dstack.storage.sigv4 import IMDS_MARK

    return ["OUTPUT", "-d", METADATA_ADDRESS, "-p", "tcp", "--syn", "-m", "mark", "!", "--mark", hex(IMDS_MARK),
            "-j", "REJECT", "--reject-with", "tcp-reset"]


class GuardError(Exception):
    pass


def guard_metadata() -> None:
    """Put the rule in place (once: it stays for the instance's life); raises GuardError saying why not."""
    iptables = shutil.which("iptables") or next(
        (p for p in ("/usr/sbin/iptables", "/sbin/iptables") if shutil.which(p)), None)
    if iptables is None:
        raise GuardError("the instance has no iptables to keep the job (on the host network) from the metadata "
                         "service; use an image with iptables")
    rule = _rule()
    if subprocess.run([iptables, "-w", "-C", *rule], capture_output=True).returncode == 0:
        return
    result = subprocess.run([iptables, "-w", "-I", *rule], capture_output=True, text=True)
    if result.returncode != 0:
        raise GuardError(f"cannot keep the job (on the host network) from the metadata service: iptables says "
                         f"{(result.stderr or result.stdout).strip()}")
