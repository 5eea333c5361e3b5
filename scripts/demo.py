"""`make demo`: a real task through the whole system, isolated from your own ~/.dstack.

Starts `dstack server` on 127.0.0.1 (state in .dstack-demo/), runs `dstack init` and
`dstack apply` on examples/hello, then stops the server. Exits with the task's exit code.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_HOME = ROOT / ".dstack-demo"
EXAMPLE = ROOT / "examples" / "hello"


def free_port(preferred: int = 3000) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port")


def wait_healthy(url: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"the server did not answer at {url} within {timeout:.0f}s")


def main() -> int:
    shutil.rmtree(DEMO_HOME, ignore_errors=True)
    env = {
        **os.environ,
        "DSTACK_SERVER_DIR": str(DEMO_HOME / "server"),
        "DSTACK_CONFIG": str(DEMO_HOME / "config.yml"),
        "COLUMNS": os.environ.get("COLUMNS", "120"),
    }
    dstack = [sys.executable, "-m", "dstack.cli.main"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"$ dstack server --port {port}", flush=True)
    server = subprocess.Popen([*dstack, "server", "--port", str(port)], env=env)
    try:
        wait_healthy(url, server)
        for args in (["init"], ["apply", "-y", "-f", ".dstack.yml"]):
            print(f"\n$ dstack {' '.join(args)}", flush=True)
            code = subprocess.run([*dstack, *args], cwd=EXAMPLE, env=env).returncode
            if code != 0:
                return code
        print("\n$ dstack ps -a", flush=True)
        subprocess.run([*dstack, "ps", "-a"], cwd=EXAMPLE, env=env, check=True)
        print(f"\nThe demo's server state is in {DEMO_HOME}. Run `dstack server` yourself for the real thing.")
        return 0
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        print("The server is stopped.")


if __name__ == "__main__":
    sys.exit(main())
