"""Every bad input: one clear line naming the problem and the fix, a non-zero exit, no traceback,
and no half-written state."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import yaml

from tests.harness import Env, Server


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def runs_count(server: Server) -> int:
    with server.api() as api:
        return len(api.get("/api/projects/main/runs", params={"all": True}).json())


def test_malformed_yaml(env: Env, server: Server, repo: Path) -> None:
    (repo / ".dstack.yml").write_text("type: task\ncommands:\n  - echo hi\n  bad: [\n")
    assert_one_line_error(env.cli("apply", "-y", cwd=repo), ".dstack.yml:", "invalid YAML")
    assert runs_count(server) == 0


def test_unknown_field_names_file_line_and_fix(env: Env, server: Server, repo: Path) -> None:
    (repo / "train.yml").write_text("type: task\ncommands: [echo hi]\nresorces:\n  gpu: 1\n")
    assert_one_line_error(env.cli("apply", "-y", "-f", "train.yml", cwd=repo),
                          "train.yml:3: resorces: unknown field `resorces`: did you mean `resources`?")
    assert runs_count(server) == 0


def test_unknown_gpu_name_plans_to_no_offers_with_a_hint(env: Env, server: Server, repo: Path) -> None:
    """As upstream, GPU names are matched against offers: a typo finds none, and the plan says what is close."""
    (repo / ".dstack.yml").write_text("type: task\ncommands: [echo hi]\nresources:\n  gpu: A1000\n")
    assert_one_line_error(env.cli("apply", "-y", cwd=repo), "no offers match",
                          "A1000 is not a GPU dstack knows (did you mean A100")
    assert runs_count(server) == 0


def test_every_problem_on_its_own_line(env: Env, server: Server, repo: Path) -> None:
    (repo / ".dstack.yml").write_text("type: task\ncommands: [echo hi]\npriority: 200\nresorces: {}\n")
    result = env.cli("apply", "-y", cwd=repo)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: .dstack.yml:3: priority: Input should be less than or equal to 100"), lines
    assert any(line.strip().startswith(".dstack.yml:4: resorces: unknown field `resorces`: did you mean "
                                       "`resources`?") for line in lines), lines


def test_not_supported_yet_is_one_line_naming_the_field(env: Env, server: Server, repo: Path) -> None:
    (repo / ".dstack.yml").write_text("type: task\nnodes: 2\nschedule: {cron: '0 * * * *'}\ncommands: [echo hi]\n")
    assert_one_line_error(env.cli("apply", "-y", cwd=repo), "not supported yet: `schedule` with `nodes`")
    (repo / ".dstack.yml").write_text("type: task\nnodes: 2\ncommands: [echo hi]\n")
    assert_one_line_error(env.cli("apply", "-y", cwd=repo), "nodes: 2 needs 2 idle hosts of one SSH fleet",
                          "Apply an SSH fleet")
    assert runs_count(server) == 0


def test_a_fleet_the_project_cannot_launch_is_one_line_naming_why(env: Env, server: Server, repo: Path) -> None:
    (repo / "fleet.dstack.yml").write_text("type: fleet\nnodes: 2\n")
    assert_one_line_error(env.cli("apply", "-y", "-f", "fleet.dstack.yml", cwd=repo),
                          "no backend of project 'main' can launch fleet instances: the local backend has no "
                          "fleets yet", "Add an AWS backend")
    (repo / "fleet.dstack.yml").write_text("type: fleet\nname: mine\nssh_config:\n  hosts: [10.0.0.1]\n")
    assert_one_line_error(env.cli("apply", "-y", "-f", "fleet.dstack.yml", cwd=repo),
                          "ssh_config.hosts[0] (10.0.0.1): no key to log in with", "Set ssh_config.identity_file")
    (repo / "fleet.dstack.yml").write_text("type: fleet\nname: mine\nssh_config:\n  identity_file: nope\n"
                                           "  hosts: [10.0.0.1]\n")
    assert_one_line_error(env.cli("apply", "-y", "-f", "fleet.dstack.yml", cwd=repo),
                          "ssh_config.identity_file: cannot read", "Point identity_file at the private key")
    assert_one_line_error(env.cli("delete", "ghost", "-y", cwd=repo), "no fleet or volume 'ghost' in project 'main'",
                          "dstack fleet")
    assert env.cli("fleet", cwd=repo).stdout.startswith("No fleets")


def test_missing_file(env: Env, server: Server, repo: Path) -> None:
    assert_one_line_error(env.cli("apply", "-y", "-f", "nope.yml", cwd=repo), "nope.yml not found", "-f")
    # In a subdirectory of an initialized repo: the file is what is missing, not the repo.
    sub = repo / "sub" / "dir"
    sub.mkdir(parents=True)
    assert_one_line_error(env.cli("apply", "-y", "-f", "missing.yml", cwd=sub), "missing.yml not found", "-f")
    # And a configuration there runs with the repo's code (the directory `dstack init` ran in).
    (repo / "marker.txt").write_text("repo-root\n")
    (sub / "task.yml").write_text("type: task\nname: from-sub\ncommands: [cat marker.txt]\n"
                                  "resources: {cpu: 1.., memory: 1GB..}\n")
    result = env.cli("apply", "-y", "-f", "task.yml", cwd=sub)
    assert result.returncode == 0 and "repo-root" in result.stdout, result.stdout + result.stderr


def test_no_offers_says_what_was_asked_and_what_exists(env: Env, server: Server, repo: Path) -> None:
    (repo / ".dstack.yml").write_text("type: task\ncommands: [echo hi]\nresources:\n  memory: 100TB..\n")
    result = env.cli("apply", "-y", cwd=repo)
    assert_one_line_error(result, "no offers match", "mem=100TB..", "local offers", "memory 100TB..")
    assert runs_count(server) == 0


def test_not_initialized_directory(env: Env, server: Server) -> None:
    other = env.home / "other"
    other.mkdir()
    (other / ".dstack.yml").write_text("type: task\ncommands: [echo hi]\n")
    assert_one_line_error(env.cli("apply", "-y", cwd=other), "is not in a dstack repo", "dstack init")


def test_unknown_run_and_stopping_a_finished_run(env: Env, server: Server, repo: Path) -> None:
    assert_one_line_error(env.cli("logs", "ghost", cwd=repo), "run 'ghost' does not exist", "dstack ps -a")
    assert_one_line_error(env.cli("stop", "ghost", cwd=repo), "run 'ghost' does not exist")
    (repo / ".dstack.yml").write_text("type: task\nname: quick\ncommands: [echo hi]\nresources: {cpu: 1.., memory: 1GB..}\n")
    assert env.cli("apply", "-y", cwd=repo).returncode == 0
    assert_one_line_error(env.cli("stop", "quick", cwd=repo), "run 'quick' has already finished (done)")


def test_wrong_token(env: Env, server: Server, repo: Path) -> None:
    path = env.home / ".dstack" / "config.yml"
    config = yaml.safe_load(path.read_text())
    config["projects"][0]["token"] = "not-the-token"
    path.write_text(yaml.safe_dump(config))
    assert_one_line_error(env.cli("ps", cwd=repo), "invalid token", "config.yml", "dstack config --url")
    # `dstack config` itself: the token it was given is the problem, not the config file.
    result = env.cli("config", "--url", server.url, "--token", "also-wrong", cwd=repo)
    assert_one_line_error(result, "does not accept this token", "Users page")
    assert "dstack config" not in result.stderr


def test_broken_cli_config(env: Env, server: Server, repo: Path) -> None:
    path = env.home / ".dstack" / "config.yml"
    good = path.read_text()
    config = yaml.safe_load(good)
    config["projects"][0]["default"] = "yes please"
    path.write_text(yaml.safe_dump(config))
    assert_one_line_error(env.cli("ps", cwd=repo), "is not a valid dstack config", "projects[0].default: expected a bool",
                          "Fix or delete the file")
    del config["projects"][0]["token"]
    config["projects"][0]["default"] = True
    path.write_text(yaml.safe_dump(config))
    assert_one_line_error(env.cli("ps", cwd=repo), "projects[0]: missing field token")
    path.write_text(good)
    assert env.cli("ps", cwd=repo).returncode == 0


def test_server_not_running(env: Env, server: Server, repo: Path) -> None:
    server.stop()
    assert_one_line_error(env.cli("ps", cwd=repo), "cannot reach the dstack server", "dstack server")


def test_port_already_in_use(env: Env) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = env.cli("server", "--port", str(port), timeout=30)
    assert_one_line_error(result, f"port {port} on 127.0.0.1 is already in use", "--port")
    # Nothing was created: the check runs before the database is touched.
    assert not (env.home / ".dstack" / "server").exists()


def test_no_confirmation_without_a_terminal(env: Env, server: Server, repo: Path) -> None:
    (repo / ".dstack.yml").write_text("type: task\ncommands: [echo hi]\nresources: {cpu: 1.., memory: 1GB..}\n")
    assert_one_line_error(env.cli("apply", cwd=repo, input=""), "standard input is not a terminal", "-y")
    assert runs_count(server) == 0


def test_env_without_value(env: Env, server: Server, repo: Path) -> None:
    (repo / ".dstack.yml").write_text("type: task\ncommands: [echo hi]\nenv: [SOME_UNSET_VAR]\n"
                                      "resources: {cpu: 1.., memory: 1GB..}\n")
    assert_one_line_error(env.cli("apply", "-y", cwd=repo), "SOME_UNSET_VAR has no value", "export")


def test_secret_from_standard_input(env: Env, server: Server, repo: Path) -> None:
    result = env.cli("secrets", "set", "PIPED", cwd=repo, input="s3cr3t-from-pipe\n")
    assert result.returncode == 0, result.stderr
    assert "GetPassWarning" not in result.stderr and "s3cr3t" not in result.stdout + result.stderr
    assert "PIPED" in env.cli("secrets", "list", cwd=repo).stdout
    empty = env.cli("secrets", "set", "EMPTY", cwd=repo, input="")
    assert empty.returncode != 0 and "empty" in empty.stderr and "Traceback" not in empty.stderr


def test_a_separate_config_leaves_the_users_dstack_dir_alone(env: Env, tmp_path: Path) -> None:
    """As `make demo` runs: DSTACK_CONFIG elsewhere; nothing is written under ~/.dstack but the server's
    own directory, and the token message names the config file that was written."""
    other = tmp_path / "demo"
    env.extra.update({"DSTACK_CONFIG": str(other / "config.yml"), "DSTACK_SERVER_DIR": str(other / "server")})
    srv = Server(env).start()
    try:
        assert f"it is also in {other / 'config.yml'}" in srv.output()
        repo = env.home / "demo-repo"
        repo.mkdir()
        assert env.cli("init", cwd=repo).returncode == 0
        (repo / ".dstack.yml").write_text("type: task\ncommands: [echo hi]\nresources: {cpu: 1.., memory: 0.1GB..}\n")
        assert env.cli("apply", "-y", cwd=repo).returncode == 0
        assert not (env.home / ".dstack").exists()
        assert (other / "ssh" / "id_ed25519").exists()
    finally:
        srv.stop()
