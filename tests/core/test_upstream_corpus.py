"""Configurations written the way upstream dstack documents each field (one file per documented
example form, `upstream_configs/`): every one parses here, with upstream's defaults, and every run
configuration plans on a real server, or is refused with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dstack.core.config_parser import parse_configuration
from dstack.core.configurations import (
    DevEnvironmentConfiguration,
    ServiceConfiguration,
    TaskConfiguration,
    not_supported_yet,
)
from dstack.core.errors import ConfigurationError
from dstack.core.infra_configurations import FleetConfiguration, GatewayConfiguration, VolumeConfiguration
from tests.harness import Server

CORPUS = Path(__file__).parent / "upstream_configs"
FILES = sorted(CORPUS.glob("*.dstack.yml"))
# Run configurations refused at apply time until the issue giving their field a runtime lands.
NOT_YET = {
    "task-fleets.dstack.yml": "`idle_duration` (keeping a run's own instance idle for reuse: use a fleet)",
}
TYPES = {"task": TaskConfiguration, "dev": DevEnvironmentConfiguration, "service": ServiceConfiguration,
         "fleet": FleetConfiguration, "volume": VolumeConfiguration, "gateway": GatewayConfiguration,
         "resources": TaskConfiguration}


def test_the_corpus_covers_every_configuration_type() -> None:
    assert len(FILES) >= 70
    assert {f.name.split("-")[0].split(".")[0] for f in FILES} == set(TYPES)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name.removesuffix(".dstack.yml"))
def test_every_documented_form_parses(path: Path) -> None:
    conf = parse_configuration(path.read_text(), path.name)
    assert isinstance(conf, TYPES[path.name.split("-")[0].split(".")[0]])
    if path.name in NOT_YET:
        assert NOT_YET[path.name] in [text for _, text in not_supported_yet(conf)]
    elif hasattr(conf, "commands") or hasattr(conf, "init"):
        assert not_supported_yet(conf) == []


def test_upstream_defaults() -> None:
    task = parse_configuration("type: task\ncommands: [x]\n")
    assert (task.spot_policy, task.priority, task.stop_duration, task.max_duration, task.retry, task.nodes) == \
        ("on-demand", 0, 300, None, None, 1)
    assert (task.python, task.image, task.privileged, task.docker, task.nvcc, task.env, task.ports) == \
        (None, None, False, None, None, {}, [])
    assert task.job_working_dir() == "/workflow" and task.repos == [] and task.files == []
    dev = parse_configuration("type: dev-environment\n")
    assert dev.ide is None and dev.inactivity_duration is None and dev.init == []
    retry = parse_configuration("type: task\ncommands: [x]\nretry: true\n").retry
    assert retry.on_events == ["no-capacity", "interruption", "error"] and retry.duration == 3600
    service = parse_configuration("type: service\ncommands: [x]\nport: 8000\n")
    assert (service.port.local_port, service.port.container_port) == (80, 8000)
    assert (service.auth, service.strip_prefix, service.https, service.replicas.min, service.replicas.max) == \
        (True, True, "auto", 1, 1)
    fleet = parse_configuration("type: fleet\nnodes: 0..2\n")
    assert (fleet.nodes.min, fleet.nodes.max, fleet.placement, fleet.blocks) == (0, 2, None, 1)
    volume = parse_configuration("type: volume\nbackend: aws\nregion: us-east-1\nsize: 100GB\n")
    assert volume.size.min == 100
    gateway = parse_configuration("type: gateway\nbackend: aws\nregion: eu-west-1\ndomain: example.com\n")
    assert gateway.public_ip is True and gateway.default is False and gateway.certificate.type == "lets-encrypt"


def test_short_forms_read_as_upstream_documents_them() -> None:
    conf = parse_configuration(
        "type: task\ncommands: [x]\n"
        "repos: ['..:/my-repo']\n"
        "files: ['.:examples', '~/.ssh/id_rsa:/root/.ssh/id_rsa', '../data', '~/.cache/hf/token']\n"
        "volumes: ['my-vol:/data', '/mnt/cache:/root/.cache']\n"
        "schedule:\n  cron: '15 23 * * *'\n"
        "utilization_policy: {min_gpu_utilization: 10, time_window: 1h}\n"
        "stop_duration: off\nidle_duration: off\n")
    assert (conf.repos[0].local_path, conf.repos[0].path) == ("..", "/my-repo")
    assert [(f.local_path, f.container_path()) for f in conf.files] == [
        (".", "examples"), ("~/.ssh/id_rsa", "/root/.ssh/id_rsa"), ("../data", "data"),
        ("~/.cache/hf/token", "~/.cache/hf/token")]
    assert conf.volumes[0].name == ["my-vol"] and conf.volumes[1].instance_path == "/mnt/cache"
    assert conf.schedule.cron == ["15 23 * * *"]
    assert conf.utilization_policy.time_window == 3600
    assert conf.stop_duration is None and conf.idle_duration == -1
    for text, url, path in [
        ("https://github.com/dstackai/dstack", "https://github.com/dstackai/dstack", "."),
        ("https://github.com/org/repo.git:/src", "https://github.com/org/repo.git", "/src"),
        ("git@github.com:org/private.git", "git@github.com:org/private.git", "."),
        ("git@github.com:org/private.git:sub", "git@github.com:org/private.git", "sub"),
        ("https://git.example.com:8443/org/repo", "https://git.example.com:8443/org/repo", "."),
    ]:
        repo = parse_configuration(f"type: task\ncommands: [x]\nrepos: ['{text}']\n").repos[0]
        assert (repo.url, repo.path) == (url, path), text


@pytest.mark.parametrize(("text", "message"), [
    ("priority: 101", r":3: priority: Input should be less than or equal to 100"),
    ("utilization_policy: {min_gpu_utilization: 10, time_window: 1m}", r"time_window must be at least 5m"),
    ("utilization_policy: {min_gpu_utilization: 120, time_window: 1h}", r"less than or equal to 100"),
    ("schedule: {cron: '61 * * * *'}", r"schedule\.cron: '61 \* \* \* \*' is not a cron expression"),
    ("schedule: {cron: []}", r"give at least one cron expression"),
    ("retry: {on_events: []}", r"give at least one of no-capacity"),
    ("nodes: 0", r"nodes: Input should be greater than or equal to 1"),
    ("repos: [a, b]", r"at most one repo per run"),
    ("repos: [{url: 'https://x/y', hash: zz}]", r"hash 'zz' is not a commit hash"),
    ("docker: true\nimage: ubuntu", r"`docker: true` runs its own Docker-in-Docker image"),
    ("tags: {'aws:x': y}", r"tag key 'aws:x'"),
    ("backends: [gcpp]", r"unknown backend 'gcpp'"),
    ("shell: zsh", r"expected bash, sh or an absolute path"),
    ("working_dir: ../up", r"`\.\.` is not allowed"),
    ("volumes: [data]", r"expected volume-name:/container/path"),
    ("creation_policy: always", r"creation_policy: Input should be 'reuse' or 'reuse-or-create'"),
    ("startup_order: random", r"startup_order: Input should be"),
    ("env: [A=1, A=2]", r"A is given twice"),
])
def test_upstream_validation(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_configuration(f"type: task\ncommands: [x]\n{text}\n")


@pytest.mark.parametrize(("text", "message"), [
    ("type: service\ncommands: [x]\nport: 8000\nreplicas: 0..4\n", r"replicas is a range: give `scaling`"),
    ("type: service\ncommands: [x]\nport: 8000\nscaling: {metric: rps, target: 1}\n", r"`scaling` needs"),
    ("type: service\ncommands: [x]\n", r"port: this field is required"),
    ("type: fleet\nname: f\n", r"give `nodes` \(a cloud fleet\) or `ssh_config`"),
    ("type: volume\nbackend: aws\nregion: r\n", r"give `size` \(a new volume\) or `volume_id`"),
    ("type: gateway\nbackend: aws\n", r"region: this field is required"),
])
def test_other_types_validation(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_configuration(text)


def test_unknown_fields_suggest_only_close_names_at_the_same_level() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_configuration("type: task\ncommands: [x]\nretry:\n  on_event: [error]\n  durration: 1h\n"
                            "resources:\n  gpus: 1\nenviron: {}\n", "t.yml")
    lines = str(info.value).splitlines()
    assert "t.yml:4: retry.on_event: unknown field `on_event`: did you mean `on_events`?" in lines
    assert "t.yml:5: retry.durration: unknown field `durration`: did you mean `duration`?" in lines
    assert "t.yml:7: resources.gpus: unknown field `gpus`: did you mean `gpu`?" in lines
    # Not close to any top-level field: the top-level fields are listed, not a nested one's.
    environ = next(line for line in lines if "environ" in line)
    assert environ.startswith("t.yml:8: environ: unknown field `environ`: known fields here: ")
    assert "on_events" not in environ and "commands" in environ


def test_every_run_configuration_plans_or_says_why(server: Server) -> None:
    """Through the server's API, as `dstack apply` plans: offers, or "no offers" with each backend's
    reason, or "not supported yet" for the fields listed in NOT_YET; never a parse error."""
    planned, refused = [], []
    with server.api() as api:
        for path in FILES:
            data = yaml.safe_load(path.read_text())
            if data["type"] not in ("task", "dev-environment", "service"):
                continue
            response = api.post("/api/projects/main/runs/plan",
                                json={"configuration": data, "repo_id": "corpus"})
            body = response.json()
            error = body.get("error", {})
            if response.status_code == 200:
                assert body["offers"], path.name
                planned.append(path.name)
            elif "not supported yet" in error.get("message", ""):
                assert NOT_YET[path.name] in error["message"], (path.name, body)
                refused.append(path.name)
            elif any(isinstance(v, dict) and "name" in v or isinstance(v, str) and not v.startswith("/")
                     for v in data.get("volumes") or []):  # network volumes this project has not created
                assert error.get("code") == "invalid_configuration" and "no volume" in error["message"], \
                    (path.name, body)
                planned.append(path.name)
            elif data.get("nodes", 1) > 1:  # multi-node: on the hosts of an SSH fleet, which this project lacks
                assert error.get("code") == "no_offers" and "idle hosts of one SSH fleet" in error["message"], \
                    (path.name, body)
                planned.append(path.name)
            else:
                assert error.get("code") == "no_offers" and "local" in error["message"], (path.name, body)
                planned.append(path.name)
    assert sorted(refused) == sorted(NOT_YET)
    tasks_and_devs = [p for p in planned + refused if not p.startswith("service")]
    share = sum(1 for p in tasks_and_devs if p in planned) / len(tasks_and_devs)
    print(f"task and dev-environment forms that plan: {share:.0%} of {len(tasks_and_devs)}")
    assert share >= 0.9
