"""EC2 capacity reservations (`reservation: cr-…`): read with ec2:DescribeCapacityReservations (the
optional `reservations` statement) for their type and zone; an instance is launched into one with
RunInstances' CapacityReservationSpecification, which the base policy's RunInstances covers."""

from __future__ import annotations

import threading
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from dstack.backends.aws.errors import describe, error_code
from dstack.core.errors import BackendError

TTL = 60.0


def find(ec2: Any, reservation_id: str) -> dict[str, Any] | None:
    try:
        found = ec2.describe_capacity_reservations(CapacityReservationIds=[reservation_id])["CapacityReservations"]
    except ClientError as exc:
        if error_code(exc) in ("InvalidCapacityReservationId.NotFound", "InvalidCapacityReservationId.Malformed"):
            return None
        raise BackendError(f"cannot read capacity reservation {reservation_id}: {describe(exc)}") from exc
    except BotoCoreError as exc:
        raise BackendError(f"cannot read capacity reservation {reservation_id}: {exc}") from exc
    return found[0] if found else None


def unusable(reservation: dict[str, Any] | None, reservation_id: str, region: str,
             subnet_zone: str | None) -> str | None:
    """Why instances cannot be launched into it (None if they can)."""
    if reservation is None:
        return f"{reservation_id} is not a capacity reservation in {region}"
    if reservation.get("State") != "active":
        return f"{reservation_id} is {reservation.get('State')}, not active"
    if subnet_zone and reservation.get("AvailabilityZone") != subnet_zone:
        return (f"{reservation_id} is in {reservation.get('AvailabilityZone')}, the backend's subnet in {subnet_zone}: "
                "an instance must be launched in its reservation's zone")
    if not reservation.get("AvailableInstanceCount"):
        return f"{reservation_id} has no instance left ({reservation.get('TotalInstanceCount')} in use)"
    return None


class Reservations:
    """Reservations by id, read at most once a minute (plans and launches ask often)."""

    def __init__(self, ec2: Any) -> None:
        self.ec2 = ec2
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def get(self, reservation_id: str) -> dict[str, Any] | None:
        with self._lock:
            cached = self._cache.get(reservation_id)
            if cached and time.monotonic() - cached[0] < TTL:
                return cached[1]
        found = find(self.ec2, reservation_id)
        with self._lock:
            self._cache[reservation_id] = (time.monotonic(), found)
        return found
