"""The run page with a million log lines, in a real Chromium (Debian's, driven by Playwright).

What a user feels: how long until the last line shows, and whether the page still answers while
the lines arrive and after (a key press scrolls to the top, an evaluation round trip stays short).
"""

from __future__ import annotations

import shutil
import time

from tests.harness import Env, Server

from bench.common import uploaded_repo
from dstack.core.configurations import TaskConfiguration
from dstack.core.runs import RunSpec

LINES = 1_000_000


def bench_million_log_lines(server: Server, env: Env) -> dict[str, float] | str:
    """Figures in seconds, or why the benchmark could not run here."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return "skipped: needs Debian's chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "skipped: needs playwright (make test installs it)"
    client, repo_id, code_hash = uploaded_repo(server, env, "million-repo")
    conf = TaskConfiguration(type="task", name="million", commands=[f"seq -f 'line %.0f' 1 {LINES}"],
                             resources={"cpu": "1..", "memory": "0.1GB.."})
    run = client.runs.submit(RunSpec(configuration=conf, repo_id=repo_id, code_hash=code_hash))
    deadline = time.monotonic() + 600
    while not client.runs.get(run.name).status.finished:
        if time.monotonic() > deadline:
            return "failed: the run did not finish in 10 minutes"
        time.sleep(0.5)
    last = f"line {LINES}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(f"{server.url}/login")
            page.get_by_label("Token").fill(env.token())
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(f"{server.url}/projects")
            started = time.perf_counter()
            page.goto(f"{server.url}/projects/main/runs/{run.name}")
            round_trips = []
            while True:
                probe = time.perf_counter()
                shown = page.evaluate(f"() => document.getElementById('logs').textContent.includes('{last}')")
                round_trips.append(time.perf_counter() - probe)
                if shown:
                    break
                if time.perf_counter() - started > 300:
                    return "failed: the last line did not show in 5 minutes"
                time.sleep(0.05)
            loaded = time.perf_counter() - started
            lines = int(page.evaluate("document.getElementById('logs').dataset.lines"))
            if lines != LINES:
                return f"failed: the page holds {lines} lines, not {LINES}"
            started = time.perf_counter()
            page.locator("#logs").focus()
            page.keyboard.press("Home")
            while not page.evaluate("() => document.querySelector('#logs .logs-window')"
                                    ".textContent.startsWith('line 1\\n')"):
                time.sleep(0.01)
            to_top = time.perf_counter() - started
            in_page = page.evaluate("document.querySelector('#logs .logs-window').childElementCount"
                                    " || document.querySelector('#logs .logs-window').textContent.split('\\n').length")
        finally:
            browser.close()
    return {"loaded": loaded, "worst_round_trip": max(round_trips), "to_top": to_top, "in_page": float(in_page)}
