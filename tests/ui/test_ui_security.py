"""Stored XSS and security headers, in a real browser: a project admin's backend field that holds a
script never runs for the admin who opens the Edit page, and every page forbids inline script."""

from __future__ import annotations

import httpx

from tests.aws_harness import MotoAWS, seed_policy_user
from tests.harness import Env, Server
from tests.ui.conftest import login

BUCKET = "dstack-test-bucket"
PAYLOAD = "</script><script>window.__xss = 1; alert(document.domain)</script>"


def test_stored_xss_payload_does_not_run_and_csp_is_on_every_page(env: Env, aws: MotoAWS, page) -> None:  # noqa: ANN001
    aws.become_admin()
    aws.create_bucket(BUCKET, "us-east-1")
    key_id, secret = seed_policy_user(aws, BUCKET)
    env.extra.update(aws.server_env())
    server = Server(env).start()
    try:
        with server.api() as api:
            response = api.post("/api/projects/main/backends", json={
                "type": "aws", "region": "us-east-1", "bucket": BUCKET, "cpu_ami_name": PAYLOAD,
                "credentials": {"type": "access_key", "access_key_id": key_id, "secret_access_key": secret}})
            assert response.status_code == 201, response.text

        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        console_errors: list[str] = []
        page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
        login(page, server.url, env.token())
        page.goto(f"{server.url}/projects/main/settings/backends/aws/edit")
        # The page works (the form was built from its JSON data) and shows the value as text.
        page.wait_for_selector("#fields input")
        values = page.evaluate("() => Array.from(document.querySelectorAll('input')).map(i => i.value)")
        assert PAYLOAD in values
        assert dialogs == []
        assert page.evaluate("() => window.__xss") is None
        assert not any("Content Security Policy" in e for e in console_errors), console_errors

        pages = ["/login", "/projects", "/projects/main", "/projects/main/settings", "/admin/users",
                 "/projects/main/fleets", "/projects/main/volumes",
                 "/projects/main/settings/backends/new", "/projects/main/settings/backends/aws/edit", "/docs",
                 "/api/health", "/api/no-such-endpoint", "/static/app.js"]
        with httpx.Client(base_url=server.url, cookies={"dstack_token": env.token()}) as web:
            for path in pages:
                response = web.get(path)
                csp = response.headers.get("content-security-policy", "")
                assert "frame-ancestors 'none'" in csp, path
                assert "'unsafe-inline'" not in csp, path
                assert "script-src 'self'" in csp, path
                assert response.headers.get("x-content-type-options") == "nosniff", path
                assert response.headers.get("referrer-policy") == "no-referrer", path
    finally:
        server.stop()
