"""Products that can be ordered, and the demo catalog the development set-up seeds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Product:
    """A sellable item. Prices are integer minor units."""

    sku: str
    name: str
    unit_price: int
    currency: str = "EUR"
    active: bool = True
    # The SKU class of the metrics (orion_reservations_total{sku_class}).
    category: str = "general"


@dataclass(frozen=True)
class DemoStock:
    """Initial stock of a demo product and when it counts as low."""

    sku: str
    on_hand: int
    low_stock_threshold: int


class Catalog:
    """An immutable lookup of products by SKU."""

    def __init__(self, products: Iterable[Product] = ()) -> None:
        self._by_sku: Mapping[str, Product] = {p.sku: p for p in products}

    def get(self, sku: str) -> Product | None:
        return self._by_sku.get(sku)

    def __contains__(self, sku: object) -> bool:
        return sku in self._by_sku

    def __len__(self) -> int:
        return len(self._by_sku)

    def products(self) -> list[Product]:
        return sorted(self._by_sku.values(), key=lambda p: p.sku)


DEMO_PRODUCTS: tuple[Product, ...] = (
    Product("SKU-001", "Aurora desk lamp", 4_999, category="lighting"),
    Product("SKU-002", "Nimbus wireless mouse", 2_950, category="peripherals"),
    Product("SKU-003", "Basalt mechanical keyboard", 12_900, category="peripherals"),
    Product("SKU-004", "Cirrus 27-inch monitor", 28_900, category="displays"),
    Product("SKU-005", "Delta USB-C hub", 3_999, category="peripherals"),
    Product("SKU-006", "Ember laptop stand", 5_450, category="accessories"),
    Product("SKU-007", "Fjord noise-cancelling headphones", 19_900, category="audio"),
    Product("SKU-008", "Glacier water bottle", 1_899, category="accessories"),
    Product("SKU-009", "Harbor backpack", 8_900, category="bags"),
    Product("SKU-010", "Iris webcam", 6_999, category="peripherals"),
    Product("SKU-011", "Juniper notebook, dotted", 1_250, category="stationery"),
    Product("SKU-012", "Kestrel fountain pen", 3_400, category="stationery"),
)

DEMO_STOCK: tuple[DemoStock, ...] = tuple(
    DemoStock(p.sku, on_hand=500, low_stock_threshold=20) for p in DEMO_PRODUCTS
)
