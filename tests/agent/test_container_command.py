"""The `run` command the agent builds for each runtime (GPUs, working directory, entrypoint): what
reaches Docker or Podman, checked where no GPU machine is at hand."""

from __future__ import annotations

from dstack.agent.container import ContainerSpec, Runtime, pull_failure, registry_host


def _cmd(binary: str, **fields: object) -> list[str]:
    fields.setdefault("working_dir", "/workflow")
    fields.setdefault("mounts", [("/w/repo", "/workflow")])
    spec = ContainerSpec(image="ghcr.io/org/img:1", name="dstack-j", **fields)  # type: ignore[arg-type]
    return Runtime(binary).run_command(spec, env_file="/w/.env-x")


def test_gpus_only_those_given() -> None:
    assert _cmd("docker", gpus=["all"], commands=["x"])[-7:-5] == ["--gpus", "all"]
    docker = _cmd("docker", gpus=["0", "1"], commands=["x"])
    assert docker[docker.index("--gpus") + 1] == "device=0,1"
    podman = _cmd("podman", gpus=["0", "1"], commands=["x"])
    assert [podman[i + 1] for i, a in enumerate(podman) if a == "--device"] == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    assert "--gpus" not in _cmd("docker", commands=["x"]) and "--device" not in _cmd("podman", commands=["x"])


def test_working_dir_entrypoint_and_the_images_own_command() -> None:
    cmd = _cmd("podman", commands=["echo a", "echo b"])
    assert cmd[cmd.index("-w") + 1] == "/workflow" and cmd[-4:] == ["/bin/sh", "ghcr.io/org/img:1", "-c",
                                                                     "echo a\necho b"]
    assert "/opt/app" in _cmd("podman", commands=["x"], working_dir="/opt/app")
    own = _cmd("docker")
    assert own[-1] == "ghcr.io/org/img:1" and "-w" not in own and "--entrypoint" not in own
    # Without commands the image's own working directory stays, unless the configuration names one.
    named = _cmd("docker", working_dir="/srv", working_dir_set=True)
    assert named[named.index("-w") + 1] == "/srv"
    bash = _cmd("docker", commands=["x"], shell="/bin/bash")
    assert bash[-4:] == ["/bin/bash", "ghcr.io/org/img:1", "-c", "x"]
    # Mounts in the order given (parents first): the code, then a file inside another path.
    mounts = _cmd("docker", mounts=[("/w/repo", "/workflow"), ("/w/files/0", "/root/.ssh/id_rsa")])
    assert [mounts[i + 1] for i, a in enumerate(mounts) if a == "-v"] == ["/w/repo:/workflow",
                                                                          "/w/files/0:/root/.ssh/id_rsa"]
    assert _cmd("docker", entrypoint="/init")[-3:] == ["--entrypoint", "/init", "ghcr.io/org/img:1"]
    assert "-v" in own and "/w/repo:/workflow" in own and "--env-file" in own


def test_registry_errors_in_one_line() -> None:
    assert registry_host("ghcr.io/org/img:1") == "ghcr.io" and registry_host("ubuntu:22.04") == "docker.io"
    assert registry_host("localhost:5000/x") == "localhost:5000"
    assert pull_failure("ghcr.io/o/i:1", "Error: ... 401 Unauthorized") == \
        "registry refused credentials for ghcr.io (check registry_auth)"
    assert pull_failure("ghcr.io/o/i:1", "Error: manifest unknown") == "image not found: ghcr.io/o/i:1"
    # A port with "401" in it is not an authorization error.
    assert pull_failure("127.0.0.1:40121/x:1", "reading manifest 1 in 127.0.0.1:40121/x: name unknown") == \
        "image not found: 127.0.0.1:40121/x:1"
