"""The seeds' flow in a real browser: log in, create a project, open its settings, click Edit,
then Add backend, select AWS (then Lambda) in Type, and fill the form with live checks."""

from __future__ import annotations

from pathlib import Path

from tests.aws_harness import MotoAWS, seed_policy_user
from tests.harness import Env, Server
from tests.lambda_fake import FakeLambda
from tests.ui.conftest import login, screenshot

BUCKET = "dstack-test-bucket"


def test_add_aws_and_lambda_backends_through_the_form(env: Env, aws: MotoAWS, lambda_fake: FakeLambda, page,  # noqa: ANN001
                                                      tmp_path: Path) -> None:
    aws.become_admin()
    aws.create_bucket(BUCKET, "us-east-1")
    aws.create_bucket("dstack-eu-bucket", "eu-west-1")
    key_id, secret = seed_policy_user(aws, BUCKET)
    lambda_fake.set_capacity("gpu_1x_a10", "us-west-1", 1)
    lambda_fake.set_capacity("gpu_1x_a100", "us-east-1", 1)
    aws.enforce(True)
    env.extra.update(aws.server_env())
    env.extra["DSTACK_LAMBDA_RATE_SCALE"] = "0.02"
    server = Server(env).start()
    try:
        url = server.url
        page.goto(f"{url}/login")
        screenshot(page, "login", tmp_path)
        page.get_by_label("Token").fill("not-a-token")
        page.get_by_role("button", name="Log in").click()
        assert "Invalid token" in page.get_by_role("alert").inner_text()
        assert all("401" in e for e in page.console_errors)  # the refused login, on purpose
        page.console_errors.clear()
        login(page, url, env.token())

        page.get_by_label("Name").fill("webproj")
        page.get_by_role("button", name="Create").click()
        page.wait_for_url(f"{url}/projects/webproj/settings")
        page.get_by_role("link", name="Edit").click()
        page.get_by_role("link", name="Add backend").click()
        page.wait_for_url("**/backends/new")

        # AWS: the Type field (the user chooses it, as the seeds say), the seed's fields.
        assert page.get_by_label("Type").input_value() == ""
        assert page.get_by_role("button", name="Save").is_disabled()
        page.get_by_label("Type").select_option("aws")
        page.locator("select#f-region").select_option("us-east-1")  # Region's choices come at once
        # Default credentials: the server has none, and the check says so at once (not at Save).
        page.get_by_label("Default credentials", exact=True).check()
        page.get_by_text("no default AWS credentials were found").first.wait_for()
        # Access key: its fields are "(Optional)" as in the seed; wrong keys first.
        page.get_by_label("Access key", exact=True).check()
        assert "Optional" in page.locator("label[for=f-credentials-access_key_id]").inner_text()
        page.get_by_label("Access key ID").fill("AKIANOTAREALKEY12345")
        page.get_by_label("Secret access key").fill("x" * 40)
        error = page.locator("#f-credentials-access_key_id-error")
        error.filter(has_text="AWS does not know this access key ID").wait_for()
        # Right keys: Bucket and Subnet become choices from the account.
        page.get_by_label("Access key ID").fill(key_id)
        page.get_by_label("Secret access key").fill(secret)
        page.locator("select#f-bucket").wait_for()
        assert error.inner_text() == ""
        page.locator("select#f-bucket").select_option("dstack-eu-bucket")
        page.locator("#f-bucket-error").filter(has_text="bucket dstack-eu-bucket is in eu-west-1, not us-east-1").wait_for()
        page.locator("select#f-bucket").select_option(BUCKET)
        page.get_by_text("All fields check out.").wait_for()
        assert page.locator("select#f-subnet option").count() > 1
        policy = page.locator("#notes pre")
        assert f"arn:aws:s3:::{BUCKET}/*" in policy.inner_text() and "dstack_role_dstack_test_bucket" in policy.inner_text()
        page.get_by_role("button", name="Copy").click()
        assert f"arn:aws:s3:::{BUCKET}" in page.evaluate("navigator.clipboard.readText()")
        screenshot(page, "backend-form-aws", tmp_path)
        page.get_by_role("button", name="Save").click()
        page.wait_for_url("**/settings?edit=1")
        row = page.locator("#backends tr[data-type=aws]")
        assert "us-east-1" in row.inner_text() and BUCKET in row.inner_text()

        # Lambda: a bad API key errors on its field; a good one fills Regions, all selected.
        page.get_by_role("link", name="Add backend").click()
        page.get_by_label("Type").select_option("lambda")
        assert page.locator("#f-storage option:checked").inner_text() == "AWS"
        page.locator("details#advanced summary").click()
        page.get_by_label("API URL").fill(lambda_fake.url)  # the fake, before anything is checked
        assert page.locator("#f-regions").is_disabled()  # no regions before the API key checks out
        page.locator("#f-api_key").fill("wrong-key")
        page.locator("#f-api_key-error").filter(has_text="does not accept this API key").wait_for()
        assert "Generate API key" in page.locator("#notes").inner_text()
        page.locator("#f-api_key").fill("good-key")
        page.get_by_label("Access key ID").fill(key_id)
        page.get_by_label("Secret access key").fill(secret)
        page.get_by_label("Bucket").fill(BUCKET)
        page.locator("#f-regions input[type=checkbox]").first.wait_for()
        checked = page.locator("#f-regions input[type=checkbox]:checked")
        assert checked.count() == page.locator("#f-regions input[type=checkbox]").count() > 2
        page.get_by_role("button", name="Select none").click()
        assert checked.count() == 0
        page.get_by_role("button", name="Select all").click()
        assert checked.count() == page.locator("#f-regions input[type=checkbox]").count()
        page.get_by_text("All fields check out.").wait_for()
        page.get_by_role("button", name="Save").click()
        page.wait_for_url("**/settings?edit=1")
        assert "Lambda" in page.locator("#backends tr[data-type=lambda]").inner_text()
        screenshot(page, "project-settings", tmp_path)

        # Edit keeps the stored secrets behind the masked values: the check uses the stored ones,
        # so Bucket and Subnet keep their choices and every field checks out.
        page.locator("#backends tr[data-type=aws]").get_by_role("link", name="Edit").click()
        assert page.get_by_label("Secret access key").input_value() == "********"
        page.get_by_text("All fields check out.").wait_for()
        assert page.locator("select#f-bucket").input_value() == BUCKET
        assert page.locator("select#f-subnet option").count() > 1
        page.get_by_role("button", name="Save").click()
        page.wait_for_url("**/settings?edit=1")
        assert secret not in page.content()
    finally:
        server.stop()


def test_keyboard_only_walk_of_the_add_backend_form(env: Env, server: Server, page) -> None:  # noqa: ANN001
    """The add-backend flow with the keyboard alone: the skip link, Tab order through Type and the
    fields, a type chosen with the arrow keys, focus always visible, Advanced opened with Enter."""
    login(page, server.url, env.token())
    page.goto(f"{server.url}/projects/main/settings/backends/new")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    def focus_on(element_id: str, limit: int = 30) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == element_id:
                # Focus is visible: the browser's :focus-visible outline, not none.
                assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    focus_on("f-type")
    page.keyboard.press("ArrowDown")  # — choose — → the first type
    chosen = page.evaluate("document.getElementById('f-type').value")
    assert chosen and page.locator("#fields .field").count() > 0
    if page.locator("#advanced").is_visible():
        page.evaluate("document.getElementById('advanced').querySelector('summary').id = 'advanced-summary'")
        focus_on("advanced-summary")
        page.keyboard.press("Enter")
        assert page.evaluate("document.getElementById('advanced').open")
    focus_on("save")
    assert page.evaluate("document.activeElement.disabled") is False
