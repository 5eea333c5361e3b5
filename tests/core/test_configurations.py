from __future__ import annotations

import json
import zlib

import pytest

from dstack.core.config_parser import configuration_json_schema, parse_configuration
from dstack.core.configurations import DevEnvironmentConfiguration, TaskConfiguration, parse_duration
from dstack.core.errors import ConfigurationError

FULL = """\
type: task
name: train
python: "3.11"
env:
  - HF_TOKEN
  - EPOCHS=3
working_dir: src
commands:
  - pip install -r requirements.txt
  - python train.py
ports: [8080, "9000:90"]
artifacts: [checkpoints]
resources:
  gpu: A100:80GB:2
  memory: 16GB..
  cpu: 8..
  disk: 200GB..
spot_policy: auto
max_price: 2.5
max_duration: 2h
retry:
  on_events: [no-capacity, interruption]
  duration: 1d
"""


def test_full_task() -> None:
    conf = parse_configuration(FULL)
    assert isinstance(conf, TaskConfiguration)
    assert conf.env == {"HF_TOKEN": None, "EPOCHS": "3"}
    assert [(p.local_port, p.container_port) for p in conf.ports] == [(None, 8080), (9000, 90)]
    assert conf.resources.gpu.count.min == 2 and conf.resources.gpu.memory.min == 80
    assert conf.max_duration == 7200
    assert conf.retry.on_events == ["no-capacity", "interruption"] and conf.retry.duration == 86400


def test_dev_environment() -> None:
    conf = parse_configuration("type: dev-environment\nide: vscode\ninit: [pip install x]\n")
    assert isinstance(conf, DevEnvironmentConfiguration) and conf.init == ["pip install x"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("type: task\ncommands: [x]\ncomands: [y]\n", r"\.dstack\.yml:3: comands: unknown field `comands`: did you mean `commands`\?"),
        ("type: task\ncommands: [x]\nresources:\n  gpu: A100:24GB\n", r"\.dstack\.yml:4: resources\.gpu: no A100 has 24GB"),
        ("type: task\ncommands: [x]\nresources:\n  memroy: 8GB\n", r":4: resources\.memroy: unknown field `memroy`: did you mean `memory`\?"),
        ("type: task\ncommands: [x]\nresources:\n  cpu: 8..2\n", r":4: resources\.cpu: range 8\.\.2 is empty"),
        ("type: tsk\n", r":1: type: expected one of task, dev-environment, service, fleet, volume, gateway, got 'tsk'"),
        ("type: task\n", r":1: commands: this field is required"),
        ("type: task\ncommands: []\n", r":2: commands: this field is required"),
        ("a: [\n", r"\.dstack\.yml:1: invalid YAML"),  # the last line there is, not one past it
        ("- just\n- a list\n", r"expected a mapping"),
        ("type: task\ncommands: [x]\npython: '3.8'\n", r":3: python: expected a Python version among 3\.9, 3\.10"),
        ("type: task\ncommands: [x]\npython: 3.2\n", r":3: python: expected a Python version among .* got '3\.2'"),
        ("type: task\ncommands: [x]\nmax_duration: forever\n", r":3: max_duration: expected a duration"),
        ("type: task\ncommands: [x]\nspot_policy: sometimes\n", r":3: spot_policy: Input should be 'spot', 'on-demand' or 'auto'"),
        ("type: task\ncommands: [x]\nname: My_Run\n", r":3: name: 'My_Run' is not a valid run name"),
        ("type: task\ncommands: [x]\nartifacts: [/abs]\n", r":3: artifacts: artifact path '/abs' must be relative"),
        ("type: task\ncommands: [x]\npython: '3.11'\nimage: ubuntu\n", r"give either `python` or `image`"),
        ("type: task\ncommands: [x]\nenv:\n  1BAD: x\n", r":3: env: '1BAD' is not a valid environment variable name"),
        ("type: task\ncommands: [x]\nports: [abc]\n", r":3: ports\.0: expected a port"),
        ("type: task\ncommands: [x]\nmax_price: -1\n", r":3: max_price: Input should be greater than 0"),
        ("type: task\ncommands:\n  - echo a: b\n", r":2: commands: a command was read as a mapping because it contains `: `; quote"),
    ],
    ids=lambda value: f"case-{zlib.crc32(value.encode()):08x}" if isinstance(value, str) else None,
)
def test_errors_name_file_line_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_configuration(text)


@pytest.mark.parametrize(("text", "version"), [("3.12", "3.12"), ("3.1", "3.10"), ("3.10", "3.10"),
                                               ("'3.13'", "3.13"), ("3.9", "3.9")])
def test_python_versions_as_upstream_reads_them(text: str, version: str) -> None:
    """Unquoted numbers too: YAML's 3.10 is the float 3.1, which upstream reads as 3.10."""
    assert parse_configuration(f"type: task\ncommands: [x]\npython: {text}\n").python == version


def test_error_carries_field_path() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_configuration("type: task\ncommands: [x]\nresources:\n  gpu: A100:24GB\n", "my.yml")
    assert info.value.field == "resources.gpu"
    assert str(info.value).startswith("my.yml:4:")


@pytest.mark.parametrize(("value", "seconds"), [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400),
                                                 (90, 90), ("off", None), ("1w", 604800)])
def test_durations(value: object, seconds: int | None) -> None:
    assert parse_duration(value) == seconds


def test_json_schema_is_exported_and_current() -> None:
    schema = configuration_json_schema()
    text = json.dumps(schema)
    assert "commands" in text and "dev-environment" in text
    from pathlib import Path

    committed = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "configuration.json"
    assert json.loads(committed.read_text()) == json.loads(json.dumps(schema)), (
        "docs/schemas/configuration.json is stale: regenerate it with `dstack schema > docs/schemas/configuration.json`"
    )


@pytest.mark.parametrize(("gpu", "vendor", "names", "count"), [
    ("nvidia:1..8", "nvidia", None, "1..8"),
    ("nvidia:B200:8", "nvidia", ["B200"], "8"),
    ("amd:MI300X:8", "amd", ["MI300X"], "8"),
    ("tpu:v5litepod-8", "tpu", ["v5litepod-8"], "1"),
    ("H100NVL:2", "nvidia", ["H100NVL"], "2"),
    ("RTX5090", "nvidia", ["RTX5090"], "1"),
    ("Gaudi3:8", "intel", ["Gaudi3"], "8"),
    ("MI355X", "amd", ["MI355X"], "1"),
])
def test_upstream_gpu_forms(gpu: str, vendor: str, names: list[str] | None, count: str) -> None:
    conf = parse_configuration(f"type: task\ncommands: [x]\nresources:\n  gpu: {gpu}\n")
    spec = conf.resources.gpu
    assert spec is not None and spec.vendor == vendor and spec.name == names and str(spec.count) == count


def test_gpu_mapping_cpu_arch_ports_and_ide_as_upstream() -> None:
    conf = parse_configuration("type: task\ncommands: [x]\nresources:\n  gpu: {vendor: nvidia, compute_capability: '8.0'}\n"
                               "  cpu: arm:8\nports: ['*:8080', 8000, '8001:80']\n")
    assert conf.resources.gpu.vendor == "nvidia" and conf.resources.gpu.compute_capability == 8.0
    assert conf.resources.cpu_arch == "arm" and str(conf.resources.cpu) == "8"
    assert [(p.any_local_port, p.local_port, p.container_port) for p in conf.ports] == [
        (True, None, 8080), (False, None, 8000), (False, 8001, 80)]
    assert parse_configuration("type: task\ncommands: [x]\nresources:\n  cpu: x86:4..\n").resources.cpu_arch == "x86"
    assert parse_configuration("type: dev-environment\n").ide is None  # SSH only, upstream's default
    assert parse_configuration("type: dev-environment\nide: windsurf\n").ide == "windsurf"
    with pytest.raises(ConfigurationError, match="H100 is not a amd GPU"):
        parse_configuration("type: task\ncommands: [x]\nresources:\n  gpu: amd:H100\n")
    with pytest.raises(ConfigurationError, match="architecture x86 or arm"):
        parse_configuration("type: task\ncommands: [x]\nresources:\n  cpu: sparc:8\n")
