"""A service in the browser: the runs list shows its replicas and traffic, its page the URL, the
replicas (ready or not) and each replica's logs."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.harness import Env, Server, wait_for
from tests.registry import registry_with_busybox
from tests.ui.conftest import login, screenshot


def test_service_page_shows_url_replicas_and_each_replicas_logs(env: Env, page, tmp_path: Path) -> None:  # noqa: ANN001
    with registry_with_busybox(tmp_path / "registry", "dstack-test/ui-web:1") as (registry, image):
        env.extra.update(registry.env)
        server = Server(env).start()
        try:
            repo = env.home / "repo"
            repo.mkdir()
            assert env.cli("init", cwd=repo).returncode == 0
            (repo / ".dstack.yml").write_text(f"""type: service
name: ui-web
image: {image}
port: 8000
replicas: 2
commands:
  - echo "replica up $DSTACK_JOB_ID"
  - mkdir -p /www && echo hi > /www/index.html
  - exec busybox httpd -f -p 8000 -h /www
resources: {{cpu: 1.., memory: 0.1GB..}}
""")
            assert env.cli("apply", "-y", "-d", cwd=repo, timeout=180).returncode == 0
            with server.api() as api:
                def run() -> dict:
                    return api.get("/api/projects/main/runs/ui-web").json()

                wait_for(lambda: run()["service"]["ready"] == 2, 120, interval=0.5, message="2 ready replicas")
                jobs = {j["job_num"]: j["id"] for j in run()["jobs"]}
            url = f"{server.url}/proxy/services/main/ui-web/"
            assert httpx.get(url, headers={"Authorization": f"Bearer {env.token()}"}).text == "hi\n"
            login(page, server.url, env.token())
            page.goto(f"{server.url}/projects/main")
            page.locator("#runs tr", has_text="ui-web").filter(has_text="2/2 ready").wait_for()
            page.locator("#runs a", has_text="ui-web").click()
            assert page.locator("#service-url").inner_text() == url
            page.locator("#service-replicas", has_text="2 ready of 2").wait_for()
            assert page.locator("#replicas tbody tr").count() == 2
            assert "this server's proxy" in page.locator("#service").inner_text()
            page.locator("#logs", has_text=f"replica up {jobs[0]}").wait_for()
            page.get_by_label("Replica").select_option("1")
            page.locator("#logs", has_text=f"replica up {jobs[1]}").wait_for()
            assert jobs[0] not in page.locator("#logs").inner_text()
            screenshot(page, "service-page", tmp_path)
            assert env.cli("stop", "ui-web", cwd=repo).returncode == 0
            page.goto("about:blank")  # its polling would otherwise meet the stopped server
        finally:
            server.stop()
