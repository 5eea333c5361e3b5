"""On-demand (and reference spot) prices of EC2 instance types, bundled with the package.

The bundled snapshot is `data/aws-instance-prices.csv` (one row per instance type and region).
To use a newer one, point DSTACK_AWS_PRICES_FILE at a CSV with the same columns; see
docs/backends.md ("Refreshing AWS prices") for how to build it from AWS's public price list.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

from dstack.core.gpus import normalize_gpu_name
from dstack.core.resources import GPU, InstanceResources

COLUMNS = ["instance_type", "region", "vcpus", "memory_gib", "gpu_name", "gpu_count", "gpu_memory_mib",
           "price_per_hour_usd", "spot_price_per_hour_usd"]


@dataclass(frozen=True)
class CatalogItem:
    instance_type: str
    region: str
    vcpus: int
    memory_gib: float
    gpu_name: str | None
    gpu_count: int
    gpu_memory_mib: int | None
    price: float | None
    spot_price: float | None


def _float(text: str) -> float | None:
    return float(text) if text.strip() else None


def parse(text: str) -> list[CatalogItem]:
    reader = csv.DictReader(io.StringIO(text))
    missing = set(COLUMNS) - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"the price catalog lacks the columns {', '.join(sorted(missing))}")
    return [
        CatalogItem(
            instance_type=row["instance_type"], region=row["region"], vcpus=int(row["vcpus"]),
            memory_gib=float(row["memory_gib"]), gpu_name=row["gpu_name"] or None,
            gpu_count=int(row["gpu_count"] or 0), gpu_memory_mib=int(row["gpu_memory_mib"] or 0) or None,
            price=_float(row["price_per_hour_usd"]), spot_price=_float(row["spot_price_per_hour_usd"]),
        )
        for row in reader
    ]


@functools.cache
def load() -> dict[str, dict[str, CatalogItem]]:
    """region -> instance type -> item."""
    path = os.environ.get("DSTACK_AWS_PRICES_FILE")
    if path:
        with open(path) as f:
            text = f.read()
    else:
        text = resources.files("dstack.backends.aws").joinpath("data/aws-instance-prices.csv").read_text()
    by_region: dict[str, dict[str, CatalogItem]] = {}
    for item in parse(text):
        by_region.setdefault(item.region, {})[item.instance_type] = item
    return by_region


def regions() -> list[str]:
    return sorted(load())


@dataclass
class TypeInfo:
    """An instance type as DescribeInstanceTypes tells it, in our terms."""

    name: str
    resources: InstanceResources


DEFAULT_DISK_GB = 100
# GPU families the default GPU image (ECS-optimized AL2023 GPU AMI) supports: NVIDIA, Turing or newer.
DEFAULT_GPU_IMAGE_FAMILIES = frozenset({"g4dn", "g5", "g6", "g6e", "gr6", "p4d", "p4de", "p5", "p5e", "p5en"})


def drivable(raw: dict[str, Any], *, default_image: bool) -> bool:
    """Whether our images boot this type and drive its GPUs: x86_64 only (the images are), NVIDIA
    GPUs only (the GPU image has NVIDIA's driver and toolkit), and with the default GPU image only
    the families it supports (its driver needs Turing or newer: no p3's V100)."""
    architectures = (raw.get("ProcessorInfo") or {}).get("SupportedArchitectures") or ["x86_64"]
    if "x86_64" not in architectures:
        return False
    gpus = (raw.get("GpuInfo") or {}).get("Gpus") or []
    if not gpus:
        return True
    if any((g.get("Manufacturer") or "NVIDIA").upper() != "NVIDIA" for g in gpus):
        return False
    return not default_image or raw["InstanceType"].split(".")[0] in DEFAULT_GPU_IMAGE_FAMILIES


def type_info(raw: dict[str, Any]) -> TypeInfo:
    gpus: list[GPU] = []
    for gpu in (raw.get("GpuInfo") or {}).get("Gpus", []):
        memory_gb = round(gpu["MemoryInfo"]["SizeInMiB"] / 1024)
        name = normalize_gpu_name(gpu["Name"])
        gpus += [GPU(name=name, memory_gb=memory_gb)] * int(gpu["Count"])
    resources = InstanceResources(cpus=raw["VCpuInfo"]["DefaultVCpus"], memory_gb=raw["MemoryInfo"]["SizeInMiB"] / 1024,
                                  gpus=gpus, disk_gb=DEFAULT_DISK_GB)
    return TypeInfo(name=raw["InstanceType"], resources=resources)
