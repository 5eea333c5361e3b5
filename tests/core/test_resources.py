from __future__ import annotations

import pytest
from pydantic import ValidationError

from dstack.core.resources import (
    GPU,
    GPUSpec,
    InstanceResources,
    IntRange,
    MemoryRange,
    ResourcesSpec,
    parse_memory,
    unmet_requirements,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16GB", 16), ("512MB", 0.5), ("1TB", 1024), ("0.5GB", 0.5), (8, 8), ("24 gb", 24), ("100", 100)],
)
def test_parse_memory(text: object, expected: float) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["16XB", "big", "", "-1GB", True])
def test_parse_memory_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_memory(text)


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [(4, 4, 4), ("4", 4, 4), ("2..8", 2, 8), ("4..", 4, None), ("..16", None, 16), ({"min": 1}, 1, None)],
)
def test_int_range_forms(value: object, low: int | None, high: int | None) -> None:
    rng = IntRange.model_validate(value)
    assert (rng.min, rng.max) == (low, high)


def test_int_range_errors() -> None:
    with pytest.raises(ValidationError, match="minimum is above the maximum"):
        IntRange.model_validate("8..2")
    with pytest.raises(ValidationError, match="expected a number or a range"):
        IntRange.model_validate("two")


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [("16GB", 16, 16), ("16GB..", 16, None), ("..64GB", None, 64), ("8GB..64GB", 8, 64), (32, 32, 32)],
)
def test_memory_range_forms(value: object, low: float | None, high: float | None) -> None:
    rng = MemoryRange.model_validate(value)
    assert (rng.min, rng.max) == (low, high)


@pytest.mark.parametrize(
    ("text", "names", "memory", "count"),
    [
        ("24GB", None, (24, 24), (1, 1)),
        ("A100", ["A100"], None, (1, 1)),
        ("a100", ["A100"], None, (1, 1)),
        ("A100:2", ["A100"], None, (2, 2)),
        ("A100:80GB:2", ["A100"], (80, 80), (2, 2)),
        ("A100:80GB", ["A100"], (80, 80), (1, 1)),
        ("A10G,A100:1..2", ["A10G", "A100"], None, (1, 2)),
        ("24GB..:2", None, (24, None), (2, 2)),
        ("2", None, None, (2, 2)),
        ("H100:8", ["H100"], None, (8, 8)),
        ("16GB..40GB:1..", None, (16, 40), (1, None)),
    ],
)
def test_gpu_forms(text: str, names: list[str] | None, memory: tuple | None, count: tuple) -> None:
    spec = GPUSpec.model_validate(text)
    assert spec.name == names
    assert (spec.memory.min, spec.memory.max) == memory if memory else spec.memory is None
    assert (spec.count.min, spec.count.max) == count


def test_gpu_count_as_int_and_dict() -> None:
    assert GPUSpec.model_validate(4).count.min == 4
    spec = GPUSpec.model_validate({"name": "A100,H100", "memory": "80GB", "count": "2.."})
    assert spec.name == ["A100", "H100"] and spec.count.min == 2 and spec.count.max is None


def test_unknown_gpu_names_parse_and_plan_to_no_offers_with_a_hint() -> None:
    """As upstream: a name is matched against offers, not a list; the plan says what is close."""
    from dstack.core.gpus import unknown_gpu_hint

    assert GPUSpec.model_validate("A1000").name == ["A1000"]
    assert GPUSpec.model_validate("amd:MI400X:8").vendor == "amd"
    assert unknown_gpu_hint("A1000").startswith("A1000 is not a GPU dstack knows (did you mean A100")
    assert unknown_gpu_hint("H100") is None and unknown_gpu_hint("v5litepod-8") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A100:24GB", "no A100 has 24GB of memory"),
        ("A100:2:4", "gives the count twice"),
        ("A100::2", "expected a GPU such as"),
        ("", "expected a GPU such as"),
    ],
)
def test_gpu_errors(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GPUSpec.model_validate(text)


def test_defaults_and_disk_forms() -> None:
    spec = ResourcesSpec()
    assert spec.cpu.min == 2 and spec.memory.min == 8 and spec.gpu is None and spec.disk is None
    assert ResourcesSpec.model_validate({"disk": "100GB.."}).disk.size.min == 100
    assert ResourcesSpec.model_validate({"disk": {"size": "50GB"}}).disk.size.max == 50
    assert ResourcesSpec.model_validate({"shm_size": "16GB"}).shm_size == 16


def test_what_an_instance_lacks() -> None:
    machine = InstanceResources(cpus=8, memory_gb=32, gpus=[GPU(name="A100", memory_gb=80)] * 2, disk_gb=200)
    assert unmet_requirements(ResourcesSpec.model_validate({"gpu": "A100:80GB:2"}), machine) == []
    assert unmet_requirements(ResourcesSpec.model_validate({"gpu": "24GB..:2"}), machine) == []
    assert unmet_requirements(ResourcesSpec.model_validate({"gpu": "H100"}), machine) == [
        "gpu H100:1 (has 2xA100 80GB)"
    ]
    missing = unmet_requirements(ResourcesSpec.model_validate({"cpu": "16..", "memory": "64GB.."}), machine)
    assert missing == ["cpu 16.. (has 8)", "memory 64GB.. (has 32GB)"]
    cpu_only = InstanceResources(cpus=2, memory_gb=8)
    assert unmet_requirements(ResourcesSpec.model_validate({"gpu": 1}), cpu_only) == ["gpu 1 (has none)"]
    assert unmet_requirements(ResourcesSpec.model_validate({"disk": "500GB.."}), machine) == [
        "disk 500GB.. (has 200GB)"
    ]
