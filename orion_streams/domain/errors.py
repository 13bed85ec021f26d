"""Exceptions raised by the domain; the web layer maps them to HTTP problems."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of an input."""

    field: str
    message: str


class DomainError(Exception):
    """Base of every error the domain raises."""


@dataclass
class ValidationFailed(DomainError):
    """An input broke one or more rules; nothing was changed."""

    errors: list[FieldError] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{e.field}: {e.message}" for e in self.errors)


class IllegalTransition(DomainError):
    """An order was asked to move to a state its current state cannot reach."""


class InsufficientStock(DomainError):
    """A reservation or adjustment would make available stock negative."""
