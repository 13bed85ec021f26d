"""Thin agent loops: decode, apply the domain, send, then write the table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..app import Orion
    from .payment import PaymentAgent
    from .projection import ProjectionRunner
    from .reservation import ReservationAgent
    from .saga import SagaAgent
    from .watchdog import Watchdog


@dataclass(frozen=True)
class Agents:
    """A worker's agents and the services beside them, as `register` added them."""

    saga: SagaAgent
    reservation: ReservationAgent
    payment: PaymentAgent
    projection: ProjectionRunner
    watchdog: Watchdog


def register(orion: Orion) -> Agents:
    """Add the worker's agents, timers and services to its app."""
    from . import (
        dead_letter_index,
        heartbeat,
        lifecycle,
        observability,
        payment,
        projection,
        reservation,
        saga,
        watchdog,
    )

    agents = Agents(
        saga=saga.register(orion), reservation=reservation.register(orion), payment=payment.register(orion),
        projection=projection.register(orion), watchdog=watchdog.register(orion),
    )
    dead_letter_index.register(orion)
    lifecycle.register(orion)
    observability.register(orion, agents)
    heartbeat.register(orion, agents)
    return agents
