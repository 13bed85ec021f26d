from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from orion_streams.domain.orders import OrderStatus
from orion_streams.domain.values import evolve


@dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    label: str | None = None


def test_evolve_is_replace() -> None:
    p = Point(1, 2, "a")
    for changes in ({}, {"x": 5}, {"y": 7, "label": None}):
        q = evolve(p, **changes)
        assert q == dataclasses.replace(p, **changes) and type(q) is Point
    assert p == Point(1, 2, "a")  # the original is untouched
    assert evolve(p, x=9) is not p


def test_evolve_keeps_the_copy_frozen_and_hashable() -> None:
    q = evolve(Point(1), y=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.x = 2  # type: ignore[misc]
    assert hash(q) == hash(Point(1, 3))
    assert evolve(q, label=OrderStatus.PENDING).label is OrderStatus.PENDING


def test_evolve_refuses_a_field_the_class_does_not_have() -> None:
    with pytest.raises(AssertionError):
        evolve(Point(1), z=1)


def test_evolve_refuses_a_class_that_checks_itself_on_init() -> None:
    @dataclass(frozen=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("negative")

    with pytest.raises(AssertionError, match="checks itself"):
        evolve(Checked(1), n=-1)
