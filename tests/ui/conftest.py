"""Helpers of the browser tests (the `browser` and `page` fixtures are tests/browser.py's, for every
test). Screenshots go to $DSTACK_SCREENSHOTS_DIR when set (docs/screenshots is made that way)."""

from __future__ import annotations

import os
from pathlib import Path


def screenshot(page, name: str, tmp_path: Path) -> None:  # noqa: ANN001
    target = Path(os.environ.get("DSTACK_SCREENSHOTS_DIR") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target / f"{name}.png"), full_page=True)


def login(page, url: str, token: str) -> None:  # noqa: ANN001
    page.goto(f"{url}/login")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{url}/projects")
