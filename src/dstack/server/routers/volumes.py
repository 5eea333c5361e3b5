from __future__ import annotations

from fastapi import APIRouter

from dstack.core.volumes import Volume, VolumeSpec
from dstack.server.deps import Ctx, CurrentUser, ProjectReader, ProjectUser, Session
from dstack.server.schemas import ERROR_RESPONSES
from dstack.server.services import volumes as svc

router = APIRouter(prefix="/api/projects/{project_name}", tags=["volumes"], responses=ERROR_RESPONSES)


@router.post("/volumes", status_code=201)
async def apply(body: VolumeSpec, project: ProjectUser, user: CurrentUser, session: Session, ctx: Ctx) -> Volume:
    """Create the volume (or register an existing one by `volume_id`); the provider's side runs in
    the background. Applying the same configuration again returns the volume unchanged."""
    return await svc.apply_volume(session=session, ctx=ctx, project=project, user=user, spec=body)


@router.get("/volumes")
async def list_volumes(project: ProjectReader, session: Session, all: bool = False) -> list[Volume]:
    """The project's volumes (`all`: deleted ones too), with the runs they are attached to."""
    return await svc.list_volumes(session=session, project=project, include_deleted=all)


@router.get("/volumes/{volume_name}")
async def get_volume(volume_name: str, project: ProjectReader, session: Session) -> Volume:
    return await svc.get_volume(session=session, project=project, name=volume_name)


@router.delete("/volumes/{volume_name}")
async def delete_volume(volume_name: str, project: ProjectUser, session: Session, ctx: Ctx) -> Volume:
    """Delete it (refused while a run uses it); a registered volume is only forgotten."""
    return await svc.delete_volume(session=session, ctx=ctx, project=project, name=volume_name)
