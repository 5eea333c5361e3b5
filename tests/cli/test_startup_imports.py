"""What a `dstack` command imports before it runs: only the command group it names, and httpx
without httpx's own command-line tool (click, pygments); `dstack ps` none of typer, httpx or pydantic.
Checked in a fresh interpreter each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
sys.argv = {argv!r}
import dstack.cli.commands, dstack.cli.runs
print(json.dumps(sorted(m for m in {watched!r} if m in sys.modules)))
"""
WATCHED = ["dstack.cli.fleets", "dstack.cli.volumes", "dstack.cli.backends", "pygments", "click", "httpx"]


def _imported(*argv: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=["dstack", *argv], watched=WATCHED)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_a_command_imports_no_group_and_no_httpx_cli() -> None:
    assert _imported("ps") == ["httpx"]


def test_a_group_imports_itself_only() -> None:
    assert _imported("fleet", "list") == ["dstack.cli.fleets", "httpx"]


def test_top_level_help_lists_every_group() -> None:
    assert set(_imported("--help")) >= {"dstack.cli.fleets", "dstack.cli.volumes", "dstack.cli.backends"}


QUICK_PS = """
import json, sys
sys.argv = {argv!r}
from dstack.cli.main import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in ("typer", "httpx", "pydantic", "dstack.cli.commands") if m in sys.modules)))
"""


def _quick_ps_imports(tmp_path: Path, *argv: str) -> tuple[list[str], str]:
    config = tmp_path / "config.yml"  # a server that is not there: the command fails after its imports
    config.write_text("projects:\n- {name: main, url: 'http://127.0.0.1:9', token: t, default: true}\n")
    result = subprocess.run([sys.executable, "-c", QUICK_PS.format(argv=["dstack", "ps", *argv])],
                            capture_output=True, text=True, check=True, cwd=tmp_path,
                            env={**os.environ, "DSTACK_CONFIG": str(config)})
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_ps_imports_no_typer_httpx_or_pydantic(tmp_path: Path) -> None:
    for argv in ((), ("-a",), ("-n", "3", "-v"), ("--project=main", "--all")):
        imported, stderr = _quick_ps_imports(tmp_path, *argv)
        assert imported == [], argv
        assert "cannot reach the dstack server at http://127.0.0.1:9" in stderr


def test_ps_options_it_does_not_know_go_to_typer(tmp_path: Path) -> None:
    for argv in (("--help",), ("-w",), ("-n", "0"), ("--bogus",)):
        imported, _ = _quick_ps_imports(tmp_path, *argv)
        assert "typer" in imported and "dstack.cli.commands" in imported, argv


def test_httpx_still_works_and_its_cli_says_why_it_is_absent() -> None:
    probe = ("import dstack.api.http, httpx\n"
             "assert httpx.Client and httpx.Response\n"
             "try:\n    httpx.main()\nexcept SystemExit as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "not loaded in this process" in out


QUICK_SERVER = QUICK_PS.replace('("typer", "httpx", "pydantic", "dstack.cli.commands")', '("typer", "dstack.cli.commands")')


def _quick_server(tmp_path: Path, *argv: str) -> tuple[list[str], str]:
    result = subprocess.run([sys.executable, "-c", QUICK_SERVER.format(argv=["dstack", "server", *argv])],
                            capture_output=True, text=True, check=True, cwd=tmp_path,
                            env={**os.environ, "HOME": str(tmp_path)}, timeout=120)
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_server_with_plain_options_starts_without_typer(tmp_path: Path) -> None:
    """The port is taken: the command gets as far as binding it, and says so in one line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for argv in (("--port", str(port)), (f"--port={port}", "--host", "127.0.0.1", "--log-level=info")):
            imported, stderr = _quick_server(tmp_path, *argv)
            assert imported == [], argv
            assert f"port {port} on 127.0.0.1 is already in use" in stderr and "Traceback" not in stderr, stderr
    imported, stderr = _quick_server(tmp_path, "--log-level", "loud")
    assert imported == [] and "--log-level: 'loud' is not a log level" in stderr, stderr
    assert not (tmp_path / ".dstack").exists()  # refused before anything was written


def test_server_options_it_does_not_know_go_to_typer(tmp_path: Path) -> None:
    for argv in (("--help",), ("--port", "x"), ("--bogus",)):
        imported, _ = _quick_server(tmp_path, *argv)
        assert "typer" in imported and "dstack.cli.commands" in imported, argv


SERVER_APP = """
import json, sys
from dstack.server.app import create_app
from dstack.server.crypto import load_encryptor
app = create_app({settings})
load_encryptor(__import__("pathlib").Path("."))
assert app.openapi()["paths"]  # every route built
print(json.dumps(sorted(m for m in ("pydantic.v1", "cryptography") if m in sys.modules)))
"""


def test_the_server_app_builds_without_pydantic_v1_or_cryptography(tmp_path: Path) -> None:
    """FastAPI's probe for pydantic.v1 models imports pydantic.v1 unless skipped (routers/__init__.py);
    the encryption key is checked at start without `cryptography`, imported at the first secret."""
    settings = f"__import__('dstack.server.settings').server.settings.Settings(server_dir={str(tmp_path)!r})"
    result = subprocess.run([sys.executable, "-c", SERVER_APP.format(settings=settings)],
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    assert json.loads(result.stdout.splitlines()[-1]) == [], result.stderr


def test_typer_commands_run_with_the_cyclic_collector_on() -> None:
    """`main` turns the collector off while a command's modules load (cli/main.py); whatever runs
    longer than a quick `ps` gets it back, or a long `apply` or `attach` would keep every cycle."""
    code = ("import gc, sys\nsys.argv = ['dstack', 'fleet', '--help']\nfrom dstack.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint(gc.isenabled())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "True"


SERVER_COLLECTOR = """
import gc, sys, uvicorn
# Everything of `dstack server` but serving: what the collector is when uvicorn would start.
uvicorn.run = lambda *args, **kwargs: print(gc.isenabled(), gc.get_freeze_count() > 0)
sys.argv = ["dstack", "server", "--port", "{port}"]
from dstack.cli.main import main
main()
"""


def test_the_server_serves_with_the_collector_on_and_its_start_up_objects_frozen(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    result = subprocess.run([sys.executable, "-c", SERVER_COLLECTOR.format(port=port)], capture_output=True,
                            text=True, cwd=tmp_path, env={**env, "HOME": str(tmp_path)}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "True True", result.stdout


SERVER_MODULES = """
import json, sys, uvicorn
uvicorn.run = lambda *args, **kwargs: print(json.dumps(sorted(m for m in ("rich", "yaml") if m in sys.modules)))
sys.argv = ["dstack", "server", "--port", "{port}"]
from dstack.cli.main import main
main()
"""


def test_a_warm_server_start_imports_no_console_library_and_no_yaml(tmp_path: Path) -> None:
    """The server's own lines are plain prints, and the CLI's config (YAML) is written at the first
    start only: a start that finds the admin in place imports neither (~30 ms here)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSTACK_")}
    outputs = []
    for _ in ("fresh", "warm"):
        result = subprocess.run([sys.executable, "-c", SERVER_MODULES.format(port=port)], capture_output=True,
                                text=True, cwd=tmp_path, env={**env, "HOME": str(tmp_path)}, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
    fresh, warm = outputs
    assert "The admin token is " in fresh and "The dstack server is running at http://127.0.0.1:" in fresh, fresh
    assert json.loads(fresh.splitlines()[-1]) == ["yaml"], fresh  # ~/.dstack/config.yml written
    assert "admin token" not in warm and json.loads(warm.splitlines()[-1]) == [], warm
