"""The interface every backend implements: offers, launch, terminate.

Each backend is a package with the same modules: `models.py` (its config form),
`configurator.py` (checks a config, returns choices for fields) and `compute.py`.
"""

from __future__ import annotations

import abc
from typing import Any

from pydantic import BaseModel, Field

from dstack.core.configurations import TaskConfiguration
from dstack.core.resources import ResourcesSpec
from dstack.core.runs import Offer
from dstack.storage import Storage


class Requirements(BaseModel):
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    spot_policy: str = "on-demand"
    max_price: float | None = None
    python: str | None = None
    image: str | None = None
    regions: list[str] | None = None


class JobLaunch(BaseModel):
    """What a backend needs to start an instance that runs one job."""

    job_id: str
    project: str
    run_name: str
    job_prefix: str
    storage_url: str


class LaunchedInstance(BaseModel):
    instance_id: str
    region: str
    data: dict[str, Any] = Field(default_factory=dict, description="backend-private, kept in the DB")


class LaunchError(Exception):
    """The offer could not be launched; the scheduler tries the next one and records `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Compute(abc.ABC):
    TYPE: str

    def __init__(self, *, storage: Storage) -> None:
        self.storage = storage

    def unsupported(self, requirements: Requirements) -> str | None:
        """Why this backend can never serve `requirements` (None if it might)."""
        return None

    @abc.abstractmethod
    def get_offers(self, requirements: Requirements) -> list[Offer]:
        """Every candidate instance; the offers service filters and sorts them."""

    @abc.abstractmethod
    def launch(self, *, job: JobLaunch, offer: Offer) -> LaunchedInstance: ...

    @abc.abstractmethod
    def terminate(self, *, instance: LaunchedInstance) -> None:
        """Tear the instance down; idempotent, safe to call on a gone instance."""


def requirements_for(configuration: TaskConfiguration | Any) -> Requirements:
    return Requirements(
        resources=configuration.resources,
        spot_policy=configuration.spot_policy,
        max_price=configuration.max_price,
        python=configuration.python,
        image=configuration.image,
        regions=configuration.regions,
    )
