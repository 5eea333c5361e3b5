"""Runs in a real browser: a run submitted from the CLI shows its logs live, stops from the UI;
a read-only member sees no Add backend or Stop controls and the API refuses them too."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.harness import Env, Server, wait_for
from tests.ui.conftest import login, screenshot

TASK = """\
type: task
name: {name}
commands:
  - {command}
resources: {{cpu: 1.., memory: 1GB..}}
"""


def test_logs_live_and_stop_from_the_ui(env: Env, server: Server, repo: Path, page, tmp_path: Path) -> None:  # noqa: ANN001
    (repo / ".dstack.yml").write_text(TASK.format(
        name="ticker", command="for i in $(seq 1 600); do echo tick-$i; sleep 0.2; done"))
    assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
    login(page, server.url, env.token())
    page.goto(f"{server.url}/projects/main")
    page.locator("#runs a", has_text="ticker").wait_for()
    row = page.locator("#runs tr", has_text="ticker")
    assert "local" in row.inner_text() and "$0.0000/h" in row.inner_text()
    screenshot(page, "runs", tmp_path)
    page.locator("#runs a", has_text="ticker").click()
    logs = page.locator("#logs")
    logs.filter(has_text="tick-3").wait_for()
    seen = logs.inner_text().count("tick-")
    # New lines keep arriving without a reload, and the status follows (the page polls both).
    wait_for(lambda: logs.inner_text().count("tick-") > seen, 20, message="more log lines")
    page.locator("#status", has_text="running").wait_for()
    screenshot(page, "run-page", tmp_path)
    # The configuration as written, the offer as a card.
    assert page.locator("#configuration").inner_text().startswith("type: task\nname: ticker\n")
    assert "local · local" in page.locator("#offer").inner_text()
    # Stop asks first: dismissed, nothing happens; accepted, the run stops.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Stop").click()
    page.locator("#status", has_text="running").wait_for()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Stop").click()
    page.locator("#status", has_text="stopped").wait_for()
    page.locator("#reason", has_text="stopped by user").wait_for()
    assert page.get_by_role("button", name="Stop").is_hidden()


def test_hundred_thousand_log_lines_stay_responsive(env: Env, server: Server, repo: Path, page) -> None:  # noqa: ANN001
    (repo / ".dstack.yml").write_text(TASK.format(name="chatty", command="seq -f 'line %g' 1 100000"))
    assert env.cli("apply", "-y", cwd=repo, timeout=120).returncode == 0
    login(page, server.url, env.token())
    started = time.monotonic()
    page.goto(f"{server.url}/projects/main/runs/chatty")
    # Polled from here: wait_for_function evaluates strings in the page, which its CSP forbids.
    wait_for(lambda: page.evaluate("() => document.getElementById('logs').textContent.includes('line 100000')"),
             timeout=60, interval=0.2, message="the last log line")
    loaded = time.monotonic() - started
    # Every line is kept, only a window of them is in the page (the tail, followed).
    assert page.evaluate("document.getElementById('logs').dataset.lines") == "100000"
    in_page = page.evaluate("document.querySelector('#logs .logs-window').textContent.split('\\n').length")
    assert in_page < 1000, in_page
    # The page still answers at once: keyboard scrolling to the top shows the first lines.
    started = time.monotonic()
    page.locator("#logs").focus()
    page.keyboard.press("Home")
    wait_for(lambda: page.evaluate("() => document.getElementById('logs').scrollTop === 0 && "
                                   "document.querySelector('#logs .logs-window').textContent.startsWith('line 1\\n')"),
             timeout=5, message="the logs scrolled to the top")
    assert time.monotonic() - started < 5
    # The whole log downloads as a file.
    with page.expect_download() as download:
        page.get_by_role("button", name="Download").click()
    assert Path(download.value.path()).read_text().count("\n") == 100_000
    print(f"100,000 lines shown in {loaded:.1f}s")


def test_read_only_member_sees_no_controls_and_the_api_refuses(env: Env, server: Server, repo: Path,
                                                                page) -> None:  # noqa: ANN001
    (repo / ".dstack.yml").write_text(TASK.format(name="sleeper", command="sleep 60"))
    assert env.cli("apply", "-y", "-d", cwd=repo).returncode == 0
    with server.api() as api:
        reader = api.post("/api/users", json={"name": "reader"}).json()
        api.put("/api/projects/main/members", json={"user": "reader", "role": "read-only"}).raise_for_status()
        wait_for(lambda: api.get("/api/projects/main/runs/sleeper").json()["status"] == "running", 30)
    login(page, server.url, reader["token"])
    page.goto(f"{server.url}/projects/main/settings")
    assert page.get_by_role("link", name="Edit").count() == 0
    page.goto(f"{server.url}/projects/main/settings?edit=1")  # asking for edit mode changes nothing
    assert page.get_by_role("link", name="Add backend").count() == 0
    page.goto(f"{server.url}/projects/main/settings/backends/new")
    assert "needs the admin role" in page.locator("main").inner_text()
    page.goto(f"{server.url}/projects/main/runs/sleeper")
    page.locator("#logs").wait_for()
    assert page.get_by_role("button", name="Stop").count() == 0
    # The API refuses them too, even from the logged-in page.
    status = page.evaluate("""async () => (await fetch('/api/projects/main/runs/sleeper/stop',
        {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'})).status""")
    assert status == 403
    status = page.evaluate("""async () => (await fetch('/api/projects/main/backends',
        {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{"type": "local"}'})).status""")
    assert status == 403
    response = httpx.post(f"{server.url}/api/projects/main/runs/sleeper/stop", json={},
                          headers={"Authorization": f"Bearer {reader['token']}"})
    assert response.status_code == 403
    # The refusals above are the page's only console errors, and they were provoked on purpose.
    assert page.console_errors and all("403" in e for e in page.console_errors), page.console_errors
    page.console_errors.clear()
