"""Server-rendered pages. Data on a page refreshes through the JSON API (static/app.js)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dstack.core.errors import AuthenticationError, DstackError
from dstack.server.deps import TOKEN_COOKIE, Ctx, Session
from dstack.server.services import fleets as fleets_svc
from dstack.server.services import projects as projects_svc
from dstack.server.services import runs as runs_svc
from dstack.server.services import volumes as volumes_svc
from dstack.server.services.users import authenticate
from dstack.server.web.common import render, require_project, require_user

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> RedirectResponse:
    return RedirectResponse("/projects", status_code=303)


@router.get("/login")
async def login_page(request: Request, next: str = "/projects") -> HTMLResponse:
    return render(request, "login.html", next=next, error=None)


@router.post("/login")
async def login(request: Request, session: Session, token: Annotated[str, Form()] = "",
                next: Annotated[str, Form()] = "/projects") -> Response:
    try:
        await authenticate(session=session, token=token.strip())
    except AuthenticationError:
        return render(request, "login.html", status_code=401, next=next,
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
    user = await require_user(request, session)
    projects = await projects_svc.list_projects(session=session, user=user)
    return render(request, "projects.html", user=user, projects=projects, error=None)


@router.post("/projects")
async def create_project(request: Request, session: Session, ctx: Ctx, name: Annotated[str, Form()] = "") -> Response:
    user = await require_user(request, session)
    from dstack.server.schemas import CreateProjectRequest

    try:
        CreateProjectRequest(name=name)
        await projects_svc.create_project(session=session, encryptor=ctx.encryptor, owner=user, name=name,
                                          creation=ctx.settings.project_creation)
    except (DstackError, ValueError) as exc:
        message = str(exc) if isinstance(exc, DstackError) else (
            "Use lowercase letters, digits, - and _ (up to 50), starting with a letter or digit.")
        projects = await projects_svc.list_projects(session=session, user=user)
        return render(request, "projects.html", status_code=422, user=user, projects=projects, error=message)
    return RedirectResponse(f"/projects/{name}/settings", status_code=303)


@router.get("/projects/{project_name}")
async def runs_page(project_name: str, request: Request, session: Session) -> Response:
    user, project, role = await require_project(request, session, project_name)
    return render(request, "runs.html", user=user, project=project, role=role)


@router.get("/projects/{project_name}/fleets")
async def fleets_page(project_name: str, request: Request, session: Session) -> Response:
    user, project, role = await require_project(request, session, project_name)
    fleets = await fleets_svc.list_fleets(session=session, project=project)
    return render(request, "fleets.html", user=user, project=project, role=role, fleets=fleets)


@router.get("/projects/{project_name}/volumes")
async def volumes_page(project_name: str, request: Request, session: Session) -> Response:
    user, project, role = await require_project(request, session, project_name)
    volumes = await volumes_svc.list_volumes(session=session, project=project)
    return render(request, "volumes.html", user=user, project=project, role=role, volumes=volumes)


@router.get("/projects/{project_name}/runs/{run_name}")
async def run_page(project_name: str, run_name: str, request: Request, session: Session) -> Response:
    user, project, role = await require_project(request, session, project_name)
    try:
        run = await runs_svc.get_run(session=session, project=project, name=run_name)
    except DstackError as exc:
        return render(request, "error.html", status_code=exc.http_status, user=user, message=str(exc))
    run = request.app.state.ctx.proxy.annotate(run)
    import yaml  # noqa: PLC0415 - here: not needed to start the server

    return render(request, "run.html", user=user, project=project, role=role, run=run,
                   base_url=str(request.base_url).rstrip("/"),
                   started_at=run.job.started_at.isoformat() if run.job and run.job.started_at else "",
                   configuration=run.spec.configuration_text or yaml.safe_dump(
                       run.spec.configuration.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
