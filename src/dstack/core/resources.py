"""Resource requirements as written in `.dstack.yml` and what an instance provides.

Accepted forms (see docs/configuration.md):
  cpu: 4 | 2..8 | 4.. | ..16
  memory: 16GB | 16GB.. | 512MB | 0.5TB | 8GB..64GB   (a bare number means GB)
  disk: 100GB.. | {size: 100GB..}
  gpu: 24GB | A100 | A100:2 | A100:80GB:2 | A10G,A100:1..2 | 2 | 24GB..:2
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from dstack.core.base import CoreModel
from dstack.core.gpus import COMPUTE_CAPABILITY, KNOWN_GPUS, VENDORS, normalize_gpu_name, vendor_of
from dstack.core.pretty import format_memory, format_range, gpu_text, instance_resources_text, resources_spec_text

_UNITS = {"mb": 1 / 1024, "gb": 1.0, "tb": 1024.0}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(mb|gb|tb)?\s*\Z", re.IGNORECASE)


class StrictModel(CoreModel):
    """Rejects unknown fields, so a typo is an error rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")


def parse_memory(value: Any) -> float:
    """Parse `16GB`, `512MB`, `1TB` or a number of GB into GB."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 16GB, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return float(value)
    match = _MEMORY_RE.match(str(value))
    if not match:
        raise ValueError(f"expected a size such as 16GB, 512MB or 1TB, got {value!r}")
    return float(match.group(1)) * _UNITS[(match.group(2) or "gb").lower()]




def _split_range(value: str) -> tuple[str | None, str | None] | None:
    if ".." not in value:
        return None
    low, _, high = value.partition("..")
    return (low.strip() or None, high.strip() or None)


class IntRange(StrictModel):
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a number or a range such as 2..8, got {value!r}")
        if isinstance(value, int):
            return {"min": value, "max": value}
        if isinstance(value, str):
            bounds = _split_range(value)
            try:
                if bounds is None:
                    number = int(value.strip())
                    return {"min": number, "max": number}
                return {"min": _int_or_none(bounds[0]), "max": _int_or_none(bounds[1])}
            except ValueError:
                raise ValueError(f"expected a number or a range such as 2..8, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range {self.min}..{self.max} is empty: the minimum is above the maximum")
        return self

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def __str__(self) -> str:
        return format_range(self.min, self.max, str)


def _int_or_none(text: str | None) -> int | None:
    return None if text is None else int(text)


class MemoryRange(StrictModel):
    """A size range in GB."""

    min: float | None = Field(default=None, ge=0)
    max: float | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (parse_memory(v) if v is not None else None) for k, v in value.items()}
        if isinstance(value, str) and (bounds := _split_range(value)):
            low, high = bounds
            return {
                "min": parse_memory(low) if low else None,
                "max": parse_memory(high) if high else None,
            }
        size = parse_memory(value)
        return {"min": size, "max": size}

    @model_validator(mode="after")
    def _ordered(self) -> MemoryRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"range {format_memory(self.min)}..{format_memory(self.max)} is empty: "
                "the minimum is above the maximum"
            )
        return self

    def contains(self, value: float) -> bool:
        # A small tolerance: AWS reports 22888 MiB for a "24GB" A10G, 15.6 GiB for a "16GB" host.
        return (self.min is None or value >= self.min * 0.9) and (self.max is None or value <= self.max * 1.1)

    def __str__(self) -> str:
        return format_range(self.min, self.max, format_memory)


_COUNT_RE = re.compile(r"^\s*\d*\s*(\.\.\s*\d*\s*)?\Z")
_SIZE_TOKEN_RE = re.compile(r"^[\d.\s]*(mb|gb|tb)?[\s.]*([\d.]+\s*(mb|gb|tb)?)?\s*\Z", re.IGNORECASE)


class GPUSpec(StrictModel):
    vendor: Literal["nvidia", "amd", "intel", "tpu", "tenstorrent"] | None = None
    name: list[str] | None = None
    memory: MemoryRange | None = None
    count: IntRange = Field(default_factory=lambda: IntRange(min=1, max=1))
    total_memory: MemoryRange | None = None
    compute_capability: float | None = Field(default=None, description="NVIDIA compute capability, at least")

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected a GPU such as A100, A100:2, 24GB or A100:80GB:2, got {value!r}")
        if isinstance(value, int):
            return {"count": value}
        if isinstance(value, str):
            return _parse_gpu_string(value)
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            value = {**value, "name": [n for n in value["name"].split(",") if n.strip()]}
        if isinstance(value, dict) and isinstance(value.get("vendor"), str):
            value = {**value, "vendor": value["vendor"].lower()}
        if isinstance(value, dict) and isinstance(value.get("compute_capability"), str):
            try:
                value = {**value, "compute_capability": float(value["compute_capability"])}
            except ValueError:
                raise ValueError(f"expected a compute capability such as 8.0, got "
                                 f"{value['compute_capability']!r}") from None
        return value

    @model_validator(mode="after")
    def _check_names(self) -> GPUSpec:
        if self.name is not None:
            self.name = [normalize_gpu_name(n) for n in self.name]
            vendors = {vendor_of(n) for n in self.name} - {None}
            if self.vendor is None and len(vendors) == 1:
                self.vendor = vendors.pop()  # as upstream: the name implies the vendor
            elif self.vendor is not None and vendors - {self.vendor}:
                raise ValueError(f"{', '.join(n for n in self.name if vendor_of(n) not in (None, self.vendor))} "
                                 f"is not a {self.vendor} GPU")
            if self.memory is not None and all(n in KNOWN_GPUS for n in self.name):
                sizes = {m for n in self.name for m in KNOWN_GPUS[n]}
                if not any(self.memory.contains(m) for m in sizes):
                    raise ValueError(
                        f"no {'/'.join(self.name)} has {self.memory} of memory "
                        f"(they come with {', '.join(format_memory(m) for m in sorted(sizes))})"
                    )
        if self.count.max == 0 and (self.name or self.memory):
            raise ValueError("a GPU count of 0 contradicts the GPU name or memory given")
        return self

    def __str__(self) -> str:
        return gpu_text(self.model_dump())


def _parse_gpu_string(text: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    tokens = [t.strip() for t in text.split(":")]
    if not text.strip() or any(not t for t in tokens):
        raise ValueError(f"expected a GPU such as A100, A100:2, 24GB or A100:80GB:2, got {text!r}")
    if tokens[0].lower() in VENDORS:  # nvidia:1..8, amd:MI300X:8, tpu:v5litepod-8
        result["vendor"] = tokens.pop(0).lower()
        if result["vendor"] == "tpu" and tokens and not _COUNT_RE.match(tokens[0]):
            result["name"] = [tokens.pop(0).lower()]
    for token in tokens:
        if _COUNT_RE.match(token) and any(ch.isdigit() for ch in token):
            _set_once(result, "count", token, text)
        elif _looks_like_size(token):
            _set_once(result, "memory", token, text)
        else:
            _set_once(result, "name", [n.strip() for n in token.split(",") if n.strip()], text)
    return result


def _looks_like_size(token: str) -> bool:
    return bool(re.search(r"\d\s*(mb|gb|tb)", token, re.IGNORECASE)) and bool(_SIZE_TOKEN_RE.match(token))


def _set_once(result: dict[str, Any], key: str, value: Any, text: str) -> None:
    if key in result:
        raise ValueError(f"GPU spec {text!r} gives the {key} twice")
    result[key] = value


class DiskSpec(StrictModel):
    size: MemoryRange

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return value
        return {"size": value}


class ResourcesSpec(StrictModel):
    cpu: IntRange = Field(default_factory=lambda: IntRange(min=2), description="vCPUs: 4, 2..8, 4.., arm:8, x86:4..")
    cpu_arch: Literal["x86", "arm"] | None = Field(default=None, description="from `cpu: arm:8` / `cpu: {arch: arm}`")
    memory: MemoryRange = Field(
        default_factory=lambda: MemoryRange(min=8), description="RAM: 16GB, 8GB.., 16GB..64GB"
    )
    gpu: GPUSpec | None = Field(default=None, description="GPU: 24GB, A100, A100:2, A100:80GB:2")
    disk: DiskSpec | None = Field(default=None, description="disk size: 100GB..")
    shm_size: float | None = Field(default=None, description="shared memory size, e.g. 16GB")

    @model_validator(mode="before")
    @classmethod
    def _parse_shm(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("shm_size") is not None:
            value = {**value, "shm_size": parse_memory(value["shm_size"])}
        if isinstance(value, dict):  # upstream's CPU forms: `arm:8`, `x86:4..`, `{arch: arm, count: 8}`
            cpu = value.get("cpu")
            arch = None
            if isinstance(cpu, str) and ":" in cpu:
                arch, _, count = cpu.partition(":")
                value = {**value, "cpu": count.strip()}
            elif isinstance(cpu, dict) and "arch" in cpu:
                arch = cpu.get("arch")
                value = {**value, "cpu": cpu.get("count", "2..")}
            if arch is not None:
                arch = {"amd64": "x86", "x86_64": "x86", "aarch64": "arm", "arm64": "arm"}.get(
                    str(arch).strip().lower(), str(arch).strip().lower())
                if arch not in ("x86", "arm"):
                    raise ValueError(f"cpu: expected the architecture x86 or arm, got {arch!r}")
                value = {**value, "cpu_arch": arch}
        return value

    def pretty(self) -> str:
        return resources_spec_text(self.model_dump())


class GPU(CoreModel):
    name: str
    memory_gb: float


class InstanceResources(CoreModel):
    """What an offer or an instance actually provides."""

    cpus: int
    memory_gb: float
    gpus: list[GPU] = Field(default_factory=list)
    disk_gb: float | None = None
    spot: bool = False

    def pretty(self) -> str:
        return instance_resources_text(self.model_dump())


def unmet_requirements(spec: ResourcesSpec, resources: InstanceResources) -> list[str]:
    """What `resources` lacks to satisfy `spec`, as short phrases (empty list: it matches)."""
    missing = []
    if not spec.cpu.contains(resources.cpus):
        missing.append(f"cpu {spec.cpu} (has {resources.cpus})")
    if not spec.memory.contains(resources.memory_gb):
        missing.append(f"memory {spec.memory} (has {format_memory(round(resources.memory_gb, 1))})")
    if spec.disk is not None and resources.disk_gb is not None and not spec.disk.size.contains(resources.disk_gb):
        missing.append(f"disk {spec.disk.size} (has {format_memory(round(resources.disk_gb))})")
    missing.extend(_unmet_gpu(spec.gpu, resources.gpus))
    return missing


def _unmet_gpu(gpu: GPUSpec | None, gpus: list[GPU]) -> list[str]:
    if gpu is None:
        # No GPU asked for: GPU instances still match, but planning ranks them by price anyway.
        return []
    has = f"has {len(gpus)}x{gpus[0].name} {format_memory(gpus[0].memory_gb)}" if gpus else "has none"
    if not gpu.count.contains(len(gpus)):
        return [f"gpu {gpu} ({has})"]
    if not gpus:
        return []
    first = gpus[0]
    if gpu.vendor and vendor_of(first.name) != gpu.vendor:
        return [f"gpu {gpu} ({has})"]
    if gpu.name and first.name not in gpu.name:
        return [f"gpu {gpu} ({has})"]
    if gpu.compute_capability and COMPUTE_CAPABILITY.get(first.name, 0) < gpu.compute_capability:
        return [f"gpu {gpu} with compute capability {gpu.compute_capability}+ ({has})"]
    if gpu.memory and not gpu.memory.contains(first.memory_gb):
        return [f"gpu {gpu} ({has})"]
    if gpu.total_memory and not gpu.total_memory.contains(first.memory_gb * len(gpus)):
        return [f"gpu {gpu} ({has})"]
    return []
