"""Server-rendered pages. Data on a page refreshes through the JSON API (static/app.js)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from dstack import __version__
from dstack.core.errors import AuthenticationError, DstackError
from dstack.server.deps import TOKEN_COOKIE, Session, request_token
from dstack.server.models import UserModel
from dstack.server.services import projects as projects_svc
from dstack.server.services import runs as runs_svc
from dstack.server.services.users import authenticate

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals["version"] = __version__
router = APIRouter(include_in_schema=False)


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


async def _page_user(request: Request, session: Session) -> UserModel | None:
    try:
        return await authenticate(session=session, token=request_token(request))
    except AuthenticationError:
        return None


def _to_login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


def _render(request: Request, name: str, status_code: int = 200, **context: object) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


@router.get("/")
async def index() -> RedirectResponse:
    return RedirectResponse("/projects", status_code=303)


@router.get("/login")
async def login_page(request: Request, next: str = "/projects") -> HTMLResponse:
    return _render(request, "login.html", next=next, error=None)


@router.post("/login")
async def login(request: Request, session: Session, token: Annotated[str, Form()] = "",
                next: Annotated[str, Form()] = "/projects") -> Response:
    try:
        await authenticate(session=session, token=token.strip())
    except AuthenticationError:
        return _render(request, "login.html", status_code=401, next=next,
                       error="Invalid token. Use the token `dstack server` printed, or ask an admin.")
    target = next if next.startswith("/") and not next.startswith("//") else "/projects"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(TOKEN_COOKIE, token.strip(), httponly=True, samesite="strict", max_age=30 * 86400)
    return response


@router.post("/logout")
async def logout() -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(TOKEN_COOKIE)
    return response


@router.get("/projects")
async def projects_page(request: Request, session: Session) -> Response:
    user = await _page_user(request, session)
    if user is None:
        return _to_login(request)
    projects = await projects_svc.list_projects(session=session, user=user)
    return _render(request, "projects.html", user=user, projects=projects)


@router.get("/projects/{project_name}")
async def runs_page(project_name: str, request: Request, session: Session) -> Response:
    user = await _page_user(request, session)
    if user is None:
        return _to_login(request)
    try:
        project, role = await projects_svc.get_project_for(session=session, name=project_name, user=user)
    except DstackError as exc:
        return _render(request, "error.html", status_code=exc.http_status, user=user, message=str(exc))
    return _render(request, "runs.html", user=user, project=project, role=role)


@router.get("/projects/{project_name}/runs/{run_name}")
async def run_page(project_name: str, run_name: str, request: Request, session: Session) -> Response:
    user = await _page_user(request, session)
    if user is None:
        return _to_login(request)
    try:
        project, role = await projects_svc.get_project_for(session=session, name=project_name, user=user)
        run = await runs_svc.get_run(session=session, project=project, name=run_name)
    except DstackError as exc:
        return _render(request, "error.html", status_code=exc.http_status, user=user, message=str(exc))
    return _render(request, "run.html", user=user, project=project, role=role, run=run,
                   configuration=run.spec.configuration.model_dump(exclude_defaults=True))
