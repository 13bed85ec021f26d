"""Money is integer minor units with an ISO 4217 currency code; never floats."""

from __future__ import annotations


def format_amount(amount: int, currency: str) -> str:
    """Minor units as people read them: 12345 EUR -> "123.45 EUR" (two decimals)."""
    sign = "-" if amount < 0 else ""
    whole, cents = divmod(abs(amount), 100)
    return f"{sign}{whole:,}.{cents:02d} {currency}"
