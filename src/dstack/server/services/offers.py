"""Offers across a project's backends: filtered by the job's requirements, cheapest first."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from dstack.backends.base import Requirements
from dstack.core.errors import DstackError, NoOffersError
from dstack.core.gpus import unknown_gpu_hint
from dstack.core.resources import unmet_requirements
from dstack.core.runs import Offer
from dstack.server.context import ServerContext
from dstack.server.models import ProjectModel
from dstack.server.services.backends import compute_for


@dataclass
class OfferSearch:
    offers: list[Offer] = field(default_factory=list)
    # Per backend, why nothing (or not everything) matched: shown when no offer is left.
    rejections: list[str] = field(default_factory=list)

    def no_offers_error(self, requirements: Requirements) -> NoOffersError:
        asked = requirements.resources.pretty()
        if requirements.max_price is not None:
            asked += f", max price ${requirements.max_price:g}/h"
        if requirements.spot_policy != "on-demand":
            asked += f", spot_policy {requirements.spot_policy}"
        gpu = requirements.resources.gpu
        hints = [h for h in (unknown_gpu_hint(n) for n in (gpu.name or [])) if h] if gpu else []
        why = "; ".join(hints + self.rejections) or (
            "the project has no backends: add one with `dstack backend add -f backend.yml` or on the project's "
            "Settings page")
        return NoOffersError(
            f"no offers match: asked for {asked}; {why}",
            fix="Lower `resources`, raise `max_price`, or add a backend to the project",
        )


async def find_offers(
    *, ctx: ServerContext, project: ProjectModel, backend_types: list[str], requirements: Requirements
) -> OfferSearch:
    searches = await asyncio.gather(
        *(asyncio.to_thread(_search_backend, ctx, project, backend_type, requirements)
          for backend_type in backend_types)
    )
    result = OfferSearch()
    for search in searches:
        result.offers.extend(search.offers)
        result.rejections.extend(search.rejections)
    result.offers.sort(key=lambda o: (o.price, o.backend, o.region, o.instance_type))
    return result


def _search_backend(ctx: ServerContext, project: ProjectModel, backend_type: str,
                    requirements: Requirements) -> OfferSearch:
    search = OfferSearch()
    try:
        compute = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                              backend_type=backend_type)
        reason = compute.unsupported(requirements)
        candidates = [] if reason else compute.get_offers(requirements)
    except DstackError as exc:
        search.rejections.append(f"{backend_type}: {exc}")
        return search
    if reason:
        search.rejections.append(f"{backend_type}: {reason}")
        return search
    return filter_offers(backend_type, candidates, requirements)


def filter_offers(backend_type: str, candidates: list[Offer], requirements: Requirements) -> OfferSearch:
    search = OfferSearch()
    closest: tuple[Offer, list[str]] | None = None
    for offer in candidates:
        if requirements.spot_policy == "spot" and not offer.spot:
            continue
        if requirements.spot_policy == "on-demand" and offer.spot:
            continue
        if requirements.regions and offer.region not in requirements.regions:
            continue
        if requirements.instance_types and offer.instance_type not in requirements.instance_types:
            continue
        missing = unmet_requirements(requirements.resources, offer.resources)
        if requirements.max_price is not None and offer.price > requirements.max_price:
            missing.append(f"price ${offer.price:g}/h is above max_price")
        if not missing:
            search.offers.append(offer)
        elif closest is None or len(missing) < len(closest[1]):
            closest = (offer, missing)
    if not search.offers:
        if closest is not None:
            offer, missing = closest
            search.rejections.append(
                f"{backend_type} offers {offer.resources.pretty()} ({offer.instance_type}"
                f"{', spot' if offer.spot else ''}), which lacks {', '.join(missing)}"
            )
        else:
            search.rejections.append(f"{backend_type}: no instances match the spot policy, regions and "
                                     "instance_types")
    return search


def multinode_backends(ctx: ServerContext, project: ProjectModel,
                       backend_types: list[str]) -> tuple[list[str], list[str]]:
    """(backends that can launch a multi-node task's instances, why the others cannot)."""
    usable, reasons = [], []
    for backend in backend_types:
        if backend in ("local", "ssh"):
            continue
        why = compute_for(settings=ctx.settings, encryptor=ctx.encryptor, project=project,
                          backend_type=backend).multinode_unsupported()
        if why:
            reasons.append(why)
        else:
            usable.append(backend)
    return usable, reasons
