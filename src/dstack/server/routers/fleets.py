from __future__ import annotations

from fastapi import APIRouter

from dstack.core.fleets import Fleet, FleetPlan, FleetSpec
from dstack.server.deps import Ctx, CurrentUser, ProjectReader, ProjectUser, Session
from dstack.server.schemas import ERROR_RESPONSES
from dstack.server.services import fleets as svc

router = APIRouter(prefix="/api/projects/{project_name}", tags=["fleets"], responses=ERROR_RESPONSES)


@router.post("/fleets/plan")
async def plan(body: FleetSpec, project: ProjectReader, user: CurrentUser, session: Session, ctx: Ctx) -> FleetPlan:
    """The offers the fleet's instances would be launched from, cheapest first."""
    return await svc.get_plan(session=session, ctx=ctx, project=project, user=user, spec=body)


@router.post("/fleets", status_code=201)
async def apply(body: FleetSpec, project: ProjectUser, user: CurrentUser, session: Session, ctx: Ctx) -> Fleet:
    """Create the fleet; its instances are launched in the background."""
    return await svc.apply_fleet(session=session, ctx=ctx, project=project, user=user, spec=body)


@router.get("/fleets")
async def list_fleets(project: ProjectReader, session: Session, all: bool = False) -> list[Fleet]:
    """Active fleets with their instances (`all`: deleted ones too)."""
    return await svc.list_fleets(session=session, project=project, include_deleted=all)


@router.get("/fleets/{fleet_name}")
async def get_fleet(fleet_name: str, project: ProjectReader, session: Session) -> Fleet:
    return await svc.get_fleet(session=session, project=project, name=fleet_name)


@router.delete("/fleets/{fleet_name}")
async def delete_fleet(fleet_name: str, project: ProjectUser, session: Session, ctx: Ctx) -> Fleet:
    """Terminate its instances (refused while one runs a job) and remove it."""
    return await svc.delete_fleet(session=session, ctx=ctx, project=project, name=fleet_name)
