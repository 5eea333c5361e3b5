"""Helpers shared by the page modules."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse

from dstack import __version__
from dstack.core.errors import AuthenticationError
from dstack.server.deps import Session, request_token
from dstack.server.models import UserModel
from dstack.server.services.users import authenticate

HERE = Path(__file__).parent


def _templates():  # noqa: ANN202 - created once, lazily
    from fastapi.templating import Jinja2Templates

    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["version"] = __version__
    return templates


TEMPLATES = _templates()


async def page_user(request: Request, session: Session) -> UserModel | None:
    try:
        return await authenticate(session=session, token=request_token(request))
    except AuthenticationError:
        return None


def to_login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


def render(request: Request, name: str, status_code: int = 200, **context: object) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)
