"""The service proxy's overhead: the same small app asked directly and through the server's proxy
(`/proxy/services/main/RUN/`, a token checked), on loopback, at 4 and 32 connections: with `wrk`
where it is installed (apt-get install wrk), else a bounded asyncio client in this process."""

from __future__ import annotations

import statistics

from tests.harness import Env, Server, wait_for

from bench.common import uploaded_repo
from bench.load import Load, have_wrk, measure

# A keep-alive HTTP/1.1 app on the standard library only (the job runs with the machine's python3):
# as fast as an app can answer, so that what is measured is the proxy.
APP = r'''
import asyncio, sys

BODY = b"ok"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\n" + BODY


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", int(sys.argv[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''
PORT = 18431


def bench_proxy(server: Server, env: Env) -> dict[str, float]:
    """{"c4_p50_added_ms", "c4_p99_added_ms", "c4_rps", … for c32}: each figure from two interleaved
    rounds of direct and proxied requests."""
    from dstack.core.config_parser import parse_configuration
    from dstack.core.runs import RunSpec

    client, repo_id, code_hash = uploaded_repo(server, env, "proxy-bench")
    (env.home / "proxy-bench" / "app.py").write_text(APP)
    from dstack.api.code import build_archive

    data, code_hash = build_archive(env.home / "proxy-bench")
    client.repos.upload_code(data, code_hash)
    conf = parse_configuration(f"type: service\nname: bench-app\nport: {PORT}\ncommands: [python3 app.py {PORT}]\n"
                               "resources: {cpu: 1.., memory: 0.1GB..}\n")
    client.runs.submit(RunSpec(configuration=conf, repo_id=repo_id, code_hash=code_hash))
    wait_for(lambda: (client.runs.get("bench-app").service or None) and client.runs.get("bench-app").service.ready,
             120, interval=0.2, message="the app ready")
    headers = {"Authorization": f"Bearer {env.token()}"}
    direct, proxied = f"http://127.0.0.1:{PORT}/", f"{server.url}/proxy/services/main/bench-app/"
    figures: dict[str, float] = {"wrk": 1.0 if have_wrk() else 0.0}
    try:
        for connections in (4, 32):
            runs: dict[str, list[Load]] = {"direct": [], "proxy": []}
            for _ in range(2):
                for kind, url in (("direct", direct), ("proxy", proxied)):
                    runs[kind].append(measure(url, connections, headers))
            for q in (50, 99):
                mid = {k: statistics.median(getattr(load, f"p{q}_ms") for load in v) for k, v in runs.items()}
                figures[f"c{connections}_p{q}_added_ms"] = mid["proxy"] - mid["direct"]
                figures[f"c{connections}_p{q}_direct_ms"] = mid["direct"]
            figures[f"c{connections}_rps"] = statistics.median(load.rps for load in runs["proxy"])
            figures[f"c{connections}_direct_rps"] = statistics.median(load.rps for load in runs["direct"])
    finally:
        client.runs.stop("bench-app")
    return figures
