"""Exceptions raised by the domain; the web layer maps them to HTTP problems."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# FieldError.code of a line whose SKU the catalog does not know: the catalog may be older
# than the product, so whoever sees it may refresh the catalog and check again.
UNKNOWN_SKU = "unknown_sku"


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of an input; `code` classes it for code that must act on
    it (the message is for people and may change)."""

    field: str
    message: str
    code: str | None = dataclasses.field(default=None, compare=False)


class DomainError(Exception):
    """Base of every error the domain raises."""


@dataclass
class ValidationFailed(DomainError):
    """An input broke one or more rules; nothing was changed."""

    errors: list[FieldError] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{e.field}: {e.message}" for e in self.errors)

    def has(self, code: str) -> bool:
        """Whether any of the errors is of this class (e.g. UNKNOWN_SKU)."""
        return any(e.code == code for e in self.errors)


class NotFound(DomainError):
    """What was asked for does not exist (or is not the caller's to see)."""


class Conflict(DomainError):
    """The request is valid but cannot be done in the state things are in."""


class Unprocessable(DomainError):
    """The request as a whole cannot be taken, though each field is valid (an
    Idempotency-Key used before for another request)."""
