"""When the saga asks for an order's payment: alongside its reservations, or once every
line is held.

Alongside, an order is decided two hops sooner; but an order that then fails for stock has
its authorisation voided, so for a SKU that many orders want at once (a flash sale) or that
just turned lines away (sold out), the saga asks for the money only once the stock is held,
and a run of rejections never becomes a run of authorisations and voids. A hint, never a
decision: each line is decided by its SKU's owner, and the hint only changes when the
payment is asked for. Memory is bounded (`size` SKUs, least recently seen dropped).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PaymentTiming:
    """`hot`: orders a second for one SKU from which it counts as contended; `ttl`: how long
    the units a SKU had left when it turned a line away are believed (a restock or a
    release soon makes them wrong)."""

    hot: int = 20
    ttl: float = 5.0
    size: int = 10_000
    _left: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict)
    _demand: OrderedDict[str, tuple[int, int]] = field(default_factory=OrderedDict)

    def pay_now(self, lines: Iterable[tuple[str, int]], now: float) -> bool:
        """Count an order of (sku, quantity) lines; whether to ask for its payment alongside
        its reservations."""
        second, alongside = int(now), True
        for sku, quantity in lines:
            seen = self._demand.pop(sku, None)
            count = seen[1] + 1 if seen is not None and seen[0] == second else 1
            self._remember(self._demand, sku, (second, count))
            if count > self.hot:
                alongside = False
            known = self._left.get(sku)
            if known is not None:
                available, until = known
                if until <= now:
                    del self._left[sku]
                elif available < quantity:
                    alongside = False
        return alongside

    def rejected(self, sku: str, available: int, now: float) -> None:
        """The SKU's owner turned a line away with `available` units left."""
        self._left.pop(sku, None)
        self._remember(self._left, sku, (available, now + self.ttl))

    def reserved(self, sku: str) -> None:
        """The SKU's owner held units: it is supplying again."""
        self._left.pop(sku, None)

    def _remember(self, where: OrderedDict[str, tuple[int, Any]], sku: str, value: tuple[int, Any]) -> None:
        where[sku] = value
        if len(where) > self.size:
            where.popitem(last=False)

    def __len__(self) -> int:
        return max(len(self._left), len(self._demand))
