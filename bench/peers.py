"""Ours against upstream dstack, measured in one run, interleaved (ours, theirs, ours, …), on this
machine: CLI `--help`, `ps` (no runs, then 1,000), server start fresh and warm (wall and CPU), idle
RSS and RSS after load, list-runs throughput and p99 at 4 and 16 connections (`wrk` where installed,
else a bounded Python client).

    make bench-peers       (or: .venv/bin/python bench/peers.py)

Upstream (`dstack[server]==0.22.5`) is installed into a temporary venv (PEER_VENV=DIR: use or make
that one instead, kept). It has no local backend: its runs fail at once ("no fleets"); its 1,000
runs are one such run submitted through its CLI and then copied in its database (ours are written
into ours as finished runs), so each lists 1,000 runs of its own kind, a page of 100 at a time
(upstream's largest page).
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import Env, free_port, wait_for  # noqa: E402

from bench.load import Load, measure  # noqa: E402
from bench.run import fill_runs  # noqa: E402
from bench.server import answers, stop_group, time_start  # noqa: E402

UPSTREAM = "dstack[server]==0.22.5"
ROUNDS = 3


@dataclass
class Product:
    name: str
    dstack: list[str]  # the CLI
    health: str  # path answering 200 once the server serves
    list_path: str
    list_method: str
    list_body: str | None
    env_extra: dict[str, str] = field(default_factory=dict)

    def env(self, home: Path) -> dict[str, str]:
        env = Env(home=home).vars
        env.pop("DSTACK_WORKER_INTERVAL", None)  # the server's own pace, as users run it
        env.update(self.env_extra)
        return env

    def server_command(self, port: int) -> list[str]:
        return [*self.dstack, "server", "--host", "127.0.0.1", "--port", str(port)]


def ours() -> Product:
    return Product("ours", [sys.executable, "-m", "dstack.cli.main"], "/api/health",
                   "/api/projects/main/runs?all=true&limit=100", "GET", None)


def upstream(venv: Path, catalog_url: str) -> Product:
    return Product("upstream 0.22.5", [str(venv / "bin" / "dstack")], "/healthcheck", "/api/runs/list", "POST",
                   json.dumps({"project_name": "main", "limit": 100}), {"GPUHUNT_CATALOG_URL": catalog_url})


def serve_empty_catalog() -> str:
    """Upstream's server downloads its offers catalog (gpuhunt) at start, and exits if it cannot while
    starting: here it gets an empty one, from loopback (this machine has no internet)."""
    import io
    import threading
    import zipfile
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Catalog(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the handler's API
            provider = self.path.strip("/").split("/")[0]
            if self.path.endswith("/version"):
                body = b"bench"
            else:
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w") as archive:
                    archive.writestr(f"{provider}.csv", "")
                body = buffer.getvalue()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Catalog)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def install_upstream(tmp: Path) -> Path:
    venv = Path(os.environ["PEER_VENV"]) if os.environ.get("PEER_VENV") else tmp / "upstream-venv"
    if not (venv / "bin" / "dstack").exists():
        print(f"installing {UPSTREAM} into {venv} …", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", UPSTREAM], check=True)
    return venv


_PORTS: dict[Path, int] = {}


def port_for(home: Path) -> int:
    """One port per HOME: upstream's server asks on the terminal (and, with none, fails to start)
    before pointing the CLI's config at another URL."""
    return _PORTS.setdefault(home, free_port())


class Running:
    """A server of `product` with its state under `home`, started and stopped by `with`."""

    def __init__(self, product: Product, home: Path) -> None:
        self.product, self.home, self.port = product, home, port_for(home)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Running:
        self.proc = subprocess.Popen(self.product.server_command(self.port), env=self.product.env(self.home),
                                     cwd=self.home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(lambda: answers(self.url + self.product.health), 120, interval=0.05,
                 message=f"{self.product.name} server answering")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        stop_group(self.proc)

    def rss_mb(self) -> float:
        assert self.proc is not None
        main = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in [main, *main.children(recursive=True)]) / 2**20

    def token(self) -> str:
        return Env(home=self.home).token()


def time_cli(product: Product, home: Path, *args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([*product.dstack, *args], env=product.env(home), cwd=home, capture_output=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return time.perf_counter() - started


def seed_upstream(product: Product, home: Path, count: int) -> None:
    """One run through upstream's own CLI (it fails at once: no fleets), then copied `count - 1` times
    in its database, each a run of its own name and time."""
    repo = home / "seed"
    repo.mkdir(exist_ok=True)
    (repo / ".dstack.yml").write_text("type: task\nname: seed\ncommands: [echo hi]\n")
    db = home / ".dstack" / "server" / "data" / "sqlite.db"
    with Running(product, home):
        result = subprocess.run([*product.dstack, "apply", "-y", "-d"], env=product.env(home), cwd=repo,
                                capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr.decode()[-2000:]

        def finished() -> bool:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT status FROM runs").fetchone()[0] in ("TERMINATED", "FAILED", "DONE")

        wait_for(finished, 120, interval=0.2, message="upstream's seed run finished")
    _copy_rows(db, count - 1, run_table="runs", run_name="run_name", job_run_name="run_name")


def _copy_rows(db: Path, copies: int, *, run_table: str, run_name: str, job_run_name: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        run = dict(conn.execute(f"SELECT * FROM {run_table}").fetchone())
        jobs = [dict(j) for j in conn.execute("SELECT * FROM jobs WHERE run_id = ?", (run["id"],))]
        base = datetime.now() - timedelta(days=2)
        for i in range(copies):
            at = (base + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f")
            new_run = {**run, "id": uuid.uuid4().hex, run_name: f"bench-{i}", "submitted_at": at}
            conn.execute(f"INSERT INTO {run_table} ({','.join(new_run)}) VALUES ({','.join('?' * len(new_run))})",
                         list(new_run.values()))
            for job in jobs:
                new_job = {**job, "id": uuid.uuid4().hex, "run_id": new_run["id"], job_run_name: f"bench-{i}",
                           "submitted_at": at}
                conn.execute(f"INSERT INTO jobs ({','.join(new_job)}) VALUES ({','.join('?' * len(new_job))})",
                             list(new_job.values()))


def seed_ours(product: Product, home: Path, count: int) -> None:
    with Running(product, home):
        pass  # created and migrated
    fill_runs(Env(home=home), count)


@dataclass
class Figures:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def median(self, key: str) -> float:
        return statistics.median(self.values[key])


def interleaved(products: list[Product], rounds: int, measure_one: Callable[[Product, int], None]) -> None:
    for i in range(rounds):
        for product in products if i % 2 == 0 else list(reversed(products)):
            measure_one(product, i)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        products = [ours(), upstream(install_upstream(tmp), serve_empty_catalog())]
        figures = {p.name: Figures() for p in products}
        homes = {p.name: tmp / p.name.split()[0] for p in products}

        def help_once(product: Product, _: int) -> None:
            figures[product.name].add("help", time_cli(product, tmp, "--help"))

        interleaved(products, 5, help_once)

        def start_once(product: Product, i: int) -> None:
            home = tmp / f"start-{product.name.split()[0]}-{i}"
            home.mkdir()
            for kind in ("fresh", "warm"):
                port = port_for(home)
                start = time_start(product.server_command(port), product.env(home),
                                   lambda p, product=product: answers(f"http://127.0.0.1:{p}{product.health}"),
                                   port, home)
                figures[product.name].add(f"start_{kind}_wall", start.wall)
                figures[product.name].add(f"start_{kind}_cpu", start.cpu)

        interleaved(products, ROUNDS, start_once)
        for product in products:
            homes[product.name].mkdir()
        servers = {p.name: Running(p, homes[p.name]).__enter__() for p in products}
        try:
            time.sleep(3)
            for product in products:
                figures[product.name].add("rss_idle", servers[product.name].rss_mb())

            def ps_empty(product: Product, _: int) -> None:
                figures[product.name].add("ps_empty", time_cli(product, homes[product.name], "ps"))

            interleaved(products, 5, ps_empty)
        finally:
            for server in servers.values():
                server.__exit__()
        for product in products:
            (seed_upstream if product.name.startswith("upstream") else seed_ours)(product, homes[product.name], 1000)
        servers = {p.name: Running(p, homes[p.name]).__enter__() for p in products}
        try:
            def ps_full(product: Product, _: int) -> None:
                figures[product.name].add("ps_1000", time_cli(product, homes[product.name], "ps"))

            interleaved(products, 5, ps_full)

            def load_once(product: Product, _: int) -> None:
                server = servers[product.name]
                headers = {"Authorization": f"Bearer {server.token()}", "Content-Type": "application/json"}
                for connections in (4, 16):
                    load: Load = measure(server.url + product.list_path, connections, headers,
                                         method=product.list_method, body=product.list_body)
                    figures[product.name].add(f"c{connections}_rps", load.rps)
                    figures[product.name].add(f"c{connections}_p99", load.p99_ms)
                    figures[product.name].add("tool_wrk", 1.0 if load.tool == "wrk" else 0.0)

            interleaved(products, 2, load_once)
            time.sleep(2)
            for product in products:
                figures[product.name].add("rss_load", servers[product.name].rss_mb())
        finally:
            for server in servers.values():
                server.__exit__()
    print_table(products, figures)
    return 0


ROWS = [
    ("`dstack --help`", "help", "s"),
    ("`dstack ps`, no runs", "ps_empty", "s"),
    ("`dstack ps`, 1,000 runs stored", "ps_1000", "s"),
    ("server start → answers, fresh (wall)", "start_fresh_wall", "s"),
    ("… fresh (CPU seconds)", "start_fresh_cpu", "s"),
    ("server start → answers, warm (wall)", "start_warm_wall", "s"),
    ("… warm (CPU seconds)", "start_warm_cpu", "s"),
    ("server RSS, idle", "rss_idle", "MB"),
    ("server RSS, after the load below", "rss_load", "MB"),
    ("list runs (page of 100 of 1,000), 4 connections: req/s", "c4_rps", "/s"),
    ("… p99", "c4_p99", "ms"),
    ("list runs, 16 connections: req/s", "c16_rps", "/s"),
    ("… p99", "c16_p99", "ms"),
]


def _shown(value: float, unit: str) -> str:
    return f"{value:.3f} s" if unit == "s" else f"{value:.0f} {unit}"


def print_table(products: list[Product], figures: dict[str, Figures]) -> None:
    from rich.console import Console
    from rich.table import Table

    load = psutil.getloadavg()
    ours_name, theirs_name = products[0].name, products[1].name
    tool = "wrk" if figures[ours_name].median("tool_wrk") else "a Python client"
    table = Table(title=f"ours vs {theirs_name} ({os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f}; "
                        f"medians, interleaved; load by {tool})")
    for column in ("figure", "ours", theirs_name, "ours / theirs"):
        table.add_column(column)
    for label, key, unit in ROWS:
        mine, theirs = figures[ours_name].median(key), figures[theirs_name].median(key)
        table.add_row(label, _shown(mine, unit), _shown(theirs, unit), f"{mine / theirs:.2f}×" if theirs else "—")
    Console(width=140).print(table)
    print("Upstream's runs fail at once (it has no local backend: no fleets); ours are finished local runs.")


if __name__ == "__main__":
    sys.exit(main())
