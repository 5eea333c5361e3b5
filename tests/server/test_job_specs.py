"""The job spec the agent gets for upstream's runtime fields: commands and shell, working directory,
where the code, a repo and `files` go, Docker-in-Docker, the stop grace."""

from __future__ import annotations

from dstack.core.config_parser import parse_configuration
from dstack.core.runs import RunSpec
from dstack.server.services.job_specs import UNLIMITED_GRACE, build_job_spec
from dstack.server.settings import Settings


def _spec(text: str, secrets: dict[str, str] | None = None) -> dict:
    conf = parse_configuration(text)
    run_spec = RunSpec(configuration=conf, repo_id="r", code_hash="a" * 64, files_hash="b" * 64 if conf.files else None)
    return build_job_spec(settings=Settings(), run_spec=run_spec, run_name="r1", run_id="id", job_id="j",
                          secrets=secrets or {})


def test_commands_shell_and_working_dir() -> None:
    spec = _spec("type: task\nsetup: [echo s]\ncommands: [echo c]\nworking_dir: src\n")
    assert spec["commands"] == ["echo s", "echo c"] and spec["shell"] == "/bin/bash"
    assert spec["working_dir"] == "/workflow/src" and spec["env"]["DSTACK_WORKING_DIR"] == "/workflow/src"
    image = _spec("type: task\nimage: alpine\ncommands: [x]\nworking_dir: ~/w\n")
    assert image["shell"] == "/bin/sh" and image["working_dir"] == "~/w"  # sh in a custom image, as upstream
    assert _spec("type: task\nimage: alpine\nshell: bash\ncommands: [x]\n")["shell"] == "/bin/bash"
    assert _spec("type: task\ncommands: [x]\nshell: /bin/zsh\n")["shell"] == "/bin/zsh"
    dev = _spec("type: dev-environment\ninit: [pip install x]\n")
    assert dev["commands"][0] == "pip install x" and dev["commands"][-1] == "exec sleep infinity"


def test_code_repo_and_files_targets() -> None:
    spec = _spec("type: task\ncommands: [x]\nworking_dir: /w\nrepos: ['https://h/o/r.git:src']\nsingle_branch: true\n"
                 "files: ['a.txt', '../b:/abs/b', '~/.netrc', 'c:rel/c']\n")
    assert spec["code_target"] == "/w/src" and spec["env"]["DSTACK_REPO_DIR"] == "/w/src"
    assert spec["repo_clone"] == {"url": "https://h/o/r.git", "branch": None, "hash": None, "if_exists": "error",
                                  "single_branch": True}
    assert [f["path"] for f in spec["files"]] == ["/w/a.txt", "/abs/b", "~/.netrc", "/w/rel/c"]
    plain = _spec("type: task\ncommands: [x]\n")
    assert plain["code_target"] == "/workflow" and plain["repo_clone"] is None and plain["files"] == []


def test_docker_in_docker_and_registry_auth_from_env() -> None:
    spec = _spec("type: task\ndocker: true\ncommands: [docker ps]\n")
    assert spec["image"] == "docker:dind" and spec["privileged"] is True and spec["shell"] == "/bin/sh"
    assert spec["commands"][0].startswith("(dockerd-entrypoint.sh dockerd") and spec["commands"][1] == "docker ps"
    auth = _spec("type: task\nimage: nvcr.io/x\nenv: [NGC_API_KEY=k3y]\n"
                 "registry_auth: {username: $oauthtoken, password: '${{ env.NGC_API_KEY }}'}\n")
    assert auth["registry_auth"] == {"username": "$oauthtoken", "password": "k3y"}


def test_stop_grace_is_stop_duration() -> None:
    assert _spec("type: task\ncommands: [x]\n")["stop_grace"] == 300  # upstream's default, 5m
    assert _spec("type: task\ncommands: [x]\nstop_duration: 30s\n")["stop_grace"] == 30
    assert _spec("type: task\ncommands: [x]\nstop_duration: off\n")["stop_grace"] == UNLIMITED_GRACE
