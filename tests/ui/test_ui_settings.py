"""Members, secrets and users in a real browser."""

from __future__ import annotations

from tests.harness import Env, Server
from tests.ui.conftest import login


def test_members_secrets_and_users(env: Env, server: Server, page) -> None:  # noqa: ANN001
    page.on("dialog", lambda dialog: dialog.accept())
    login(page, server.url, env.token())
    # Users (admin only): the new token is shown once.
    page.get_by_role("link", name="Users").click()
    page.get_by_label("Name").fill("carol")
    page.get_by_role("button", name="Create").click()
    page.locator("#token-box").wait_for()
    token = page.locator("#token-value").inner_text()
    assert len(token) > 20
    # carol is in the table at once (no reload), and the page marks where we are.
    page.locator("#users td", has_text="carol").wait_for()
    assert page.locator("nav a[aria-current=page]").inner_text() == "Users"
    # The settings page: aligned backends table and the CLI snippet for this project.
    page.goto(f"{server.url}/projects/main/settings")
    assert f"dstack config --url {server.url} --project main --token" in page.locator("#cli-snippet").inner_text()
    assert page.locator("#backends tr[data-type=local] .backend-status").inner_text() == "OK"
    # The project's fleets page (none here), reached from the runs page.
    page.goto(f"{server.url}/projects/main")
    page.get_by_role("link", name="Fleets").click()
    page.get_by_text("No fleets yet.").wait_for()
    page.goto(f"{server.url}/projects/main")
    page.get_by_role("link", name="Volumes").click()
    page.get_by_text("No volumes yet.").wait_for()
    page.goto(f"{server.url}/admin/users")
    # Members: add carol as read-only, then make her a user.
    page.goto(f"{server.url}/projects/main/settings?edit=1")
    page.get_by_label("User", exact=True).fill("carol")
    page.locator("#member-role").select_option("read-only")
    page.get_by_role("button", name="Add member").click()
    page.get_by_label("Role of carol").wait_for()
    assert page.get_by_label("Role of carol").input_value() == "read-only"
    page.get_by_label("Role of carol").select_option("user")
    page.get_by_text("carol is now user").wait_for()
    with server.api() as api:
        members = {m["user"]: m["role"] for m in api.get("/api/projects/main").json()["members"]}
    assert members["carol"] == "user"
    # Secrets: the value is never shown back.
    page.get_by_label("Name").fill("HF_TOKEN")
    page.get_by_label("Value").fill("hf-very-secret")
    page.get_by_role("button", name="Add secret").click()
    page.locator("#secrets td", has_text="HF_TOKEN").wait_for()
    assert "hf-very-secret" not in page.content()
    page.locator("[data-delete-secret=HF_TOKEN]").click()
    page.get_by_text("No secrets.").wait_for()
    # The new user logs in with the shown token and sees the project.
    page.get_by_role("button", name="Log out").click()
    login(page, server.url, token)
    assert page.get_by_role("link", name="main").count() == 1
