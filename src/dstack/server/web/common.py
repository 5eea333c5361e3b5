"""Helpers shared by the page modules."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape

from dstack import __version__
from dstack.core.errors import AuthenticationError
from dstack.server.deps import Session, request_token
from dstack.server.models import ProjectModel, UserModel
from dstack.server.services.users import authenticate

HERE = Path(__file__).parent


def mount_static(app: FastAPI) -> None:
    """The pages' CSS and scripts (the pages' own routes are built at their first request)."""
    from fastapi.staticfiles import StaticFiles  # noqa: PLC0415

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


_CODE = re.compile(r"`([^`\n]+)`")


def code_spans(text: object) -> Markup:
    """A message with `code` in backticks, escaped, its code spans as <code>."""
    return Markup(_CODE.sub(r"<code>\1</code>", str(escape(text))))


@functools.cache
def _templates():  # noqa: ANN202 - created once, at the first page (Jinja2: not needed to start)
    from fastapi.templating import Jinja2Templates

    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["version"] = __version__
    templates.env.filters["code"] = code_spans
    return templates


async def page_user(request: Request, session: Session) -> UserModel | None:
    try:
        return await authenticate(session=session, token=request_token(request))
    except AuthenticationError:
        return None


def to_login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


def render(request: Request, name: str, status_code: int = 200, **context: object) -> HTMLResponse:
    return _templates().TemplateResponse(request, name, context, status_code=status_code)


class PageExit(Exception):
    """Ends a page handler early with this response (the login page, an error page)."""

    def __init__(self, response: Response) -> None:
        super().__init__("page exit")
        self.response = response


async def require_user(request: Request, session: Session) -> UserModel:
    user = await page_user(request, session)
    if user is None:
        raise PageExit(to_login(request))
    return user


async def require_project(request: Request, session: Session, name: str, min_role: str = "read-only"
                          ) -> tuple[UserModel, ProjectModel, str]:
    """The logged-in user, the project and their role in it; or the login or an error page."""
    from dstack.core.errors import DstackError
    from dstack.server.services.projects import get_project_for

    user = await require_user(request, session)
    try:
        project, role = await get_project_for(session=session, name=name, user=user, min_role=min_role)
    except DstackError as exc:
        raise PageExit(render(request, "error.html", status_code=exc.http_status, user=user, message=str(exc))) \
            from None
    return user, project, role
