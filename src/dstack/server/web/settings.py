"""Project settings (backends, members, secrets) and the admin's users page. Changes go through
the JSON API from the page's script, so the API's authorisation is the only one."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from dstack.core.errors import DstackError, ForbiddenError
from dstack.server.deps import Ctx, Session
from dstack.server.services import projects as projects_svc
from dstack.server.services import secrets as secrets_svc
from dstack.server.services.backends import BACKEND_TYPES, backend_info
from dstack.server.services.users import list_users
from dstack.server.web.common import render, require_project, require_user
from dstack.server.web.forms import backend_forms

router = APIRouter(include_in_schema=False)


def _summary(config: dict) -> dict[str, object]:
    regions = config.get("regions") or ([config["region"]] if config.get("region") else [])
    return {"regions": list(regions), "bucket": config.get("bucket") or "(local directory)"}


@router.get("/projects/{project_name}/settings")
async def settings_page(project_name: str, request: Request, session: Session, ctx: Ctx,
                        edit: bool = False) -> Response:
    user, project, role = await require_project(request, session, project_name)
    backends = []
    for backend in project.backends:
        info = backend_info(ctx.encryptor, backend)
        backends.append({"type": backend.type, "title": BACKEND_TYPES[backend.type].title, **_summary(info.config),
                         "warning": info.warning, "warning_at": info.warning_at})
    info = await projects_svc.project_info(session=session, encryptor=ctx.encryptor, project=project)
    secrets = await secrets_svc.list_secret_names(session=session, project=project)
    server_url = str(request.base_url).rstrip("/")
    return render(request, "settings.html", user=user, project=project, role=role, backends=backends,
                  members=info.members, secrets=secrets, edit=edit and role == "admin", server_url=server_url)


@router.get("/projects/{project_name}/settings/backends/new")
@router.get("/projects/{project_name}/settings/backends/{backend_type}/edit")
async def backend_form_page(project_name: str, request: Request, session: Session, ctx: Ctx,
                            backend_type: str | None = None) -> Response:
    user, project, _ = await require_project(request, session, project_name, min_role="admin")
    try:
        existing = None
        if backend_type is not None:
            backend = next((b for b in project.backends if b.type == backend_type), None)
            if backend is None:
                raise ForbiddenError(f"project {project_name!r} has no {backend_type} backend")
            existing = backend_info(ctx.encryptor, backend).config
    except DstackError as exc:
        return render(request, "error.html", status_code=exc.http_status, user=user, message=str(exc))
    taken = [b.type for b in project.backends if b.type != backend_type]
    return render(request, "backend_form.html", user=user, project=project,
                  forms=backend_forms(), existing=existing, taken=taken)


@router.get("/admin/users")
async def users_page(request: Request, session: Session) -> Response:
    user = await require_user(request, session)
    if user.global_role != "admin":
        return render(request, "error.html", status_code=403, user=user, message="Only admins manage users.")
    return render(request, "users.html", user=user, users=await list_users(session=session))
