"""When the saga asks for the payment: alongside the reservations unless the stock is
contended or just ran short."""

from __future__ import annotations

from orion_streams.services.payment_timing import PaymentTiming


def test_an_ordinary_order_pays_alongside_its_reservations() -> None:
    timing = PaymentTiming(hot=3)
    assert all(timing.pay_now([("A", 1), ("B", 2)], 10.0 + i / 10) for i in range(3))


def test_a_sku_wanted_by_more_than_hot_orders_a_second_pays_after() -> None:
    timing = PaymentTiming(hot=3)
    assert [timing.pay_now([("A", 1)], 10.1) for _ in range(5)] == [True, True, True, False, False]
    assert not timing.pay_now([("B", 1), ("A", 1)], 10.9)  # one contended line is enough
    assert timing.pay_now([("B", 1)], 10.9)
    assert timing.pay_now([("A", 1)], 11.0)  # a new second


def test_a_sku_that_turned_a_line_away_pays_after_for_more_than_it_had() -> None:
    timing = PaymentTiming(ttl=5.0)
    timing.rejected("A", 2, now=10.0)
    assert not timing.pay_now([("A", 3)], 11.0)
    assert timing.pay_now([("A", 2)], 11.0)  # it had that many left
    assert timing.pay_now([("A", 3)], 15.0)  # believed for ttl only
    timing.rejected("A", 0, now=20.0)
    timing.reserved("A")
    assert timing.pay_now([("A", 1)], 20.1)


def test_memory_is_bounded_dropping_the_least_recent_sku() -> None:
    timing = PaymentTiming(size=2)
    for sku in ("A", "B", "C"):
        timing.rejected(sku, 0, now=1.0)
        timing.pay_now([(sku, 1)], 1.0)
    assert len(timing) == 2
    assert timing.pay_now([("A", 1)], 2.0)  # forgotten
    assert not timing.pay_now([("C", 1)], 2.0)
