"""Lost requests are asked again on evidence (offsets), never because a queue is long."""

from __future__ import annotations

from orion_streams.services.outstanding import OutstandingRequests

REQ = ("stock-requests", 2)
REPLY = 1  # the order's partition of order-events


def tracker_with(*offsets: int) -> OutstandingRequests:
    waiting = OutstandingRequests(backoff=1.0, max_backoff=8.0)
    for i, offset in enumerate(offsets):
        waiting.sent(("o1", "ReserveLine", f"S{i}"), "o1", REQ, offset, REPLY, now=0.0)
    return waiting


def step(waiting: OutstandingRequests, committed: int, end: int, read: int, now: float = 0.0) -> list[object]:
    needs = waiting.consumed({REQ: committed})
    waiting.mark(dict.fromkeys(needs, end))
    return waiting.lost({REPLY: read}, now)


def test_a_request_waiting_in_a_long_queue_is_never_lost() -> None:
    waiting = tracker_with(10)
    # However long it waits, nothing is asked again until its consumer commits past it.
    for now in (1.0, 100.0, 10_000.0):
        assert step(waiting, committed=10, end=50, read=50, now=now) == []
    assert waiting.request_partitions() == {REQ}


def test_a_consumed_request_is_lost_only_once_the_asker_read_past_the_answers_place() -> None:
    waiting = tracker_with(10)
    assert waiting.consumed({REQ: 11}) == {REPLY}
    waiting.mark({REPLY: 40})  # the answer, if any, is below offset 40 of order-events
    assert waiting.lost({REPLY: 39}, now=5.0) == []  # the saga may not have read it yet
    assert waiting.lost({REPLY: 40}, now=5.0) == [("o1", "ReserveLine", "S0")]


def test_an_answered_request_is_dropped() -> None:
    waiting = tracker_with(10, 11)
    waiting.keep_only("o1", [("o1", "ReserveLine", "S1")])
    assert len(waiting) == 1
    assert step(waiting, committed=12, end=40, read=40) == [("o1", "ReserveLine", "S1")]


def test_repeats_back_off_when_no_answer_ever_comes() -> None:
    waiting = tracker_with(10)
    key = ("o1", "ReserveLine", "S0")
    assert step(waiting, committed=11, end=20, read=20, now=0.0) == [key]
    waiting.sent(key, "o1", REQ, 30, REPLY, now=0.0)  # asked again, attempt 1
    assert step(waiting, committed=31, end=25, read=25, now=0.5) == []  # lost again, but too soon
    assert waiting.lost({REPLY: 25}, now=1.0) == [key]  # after the backoff (1 s)
    waiting.sent(key, "o1", REQ, 40, REPLY, now=1.0)  # attempt 2: 2 s
    assert step(waiting, committed=41, end=26, read=26, now=2.5) == []
    assert waiting.lost({REPLY: 26}, now=3.0) == [key]


def test_a_repeat_that_never_went_out_comes_up_again() -> None:
    waiting = tracker_with(10)
    key = ("o1", "ReserveLine", "S0")
    assert step(waiting, committed=11, end=20, read=20, now=0.0) == [key]
    # The caller could not send it (no `sent` call): it is brought up again later.
    assert waiting.lost({REPLY: 20}, now=1.0) == []
    assert waiting.lost({REPLY: 20}, now=OutstandingRequests.RESEND_CHECK) == [key]


def test_an_upper_bound_stands_for_an_unknown_offset() -> None:
    # Found in recovered state: the request lies below the end offset read at adoption (20).
    waiting = OutstandingRequests()
    waiting.sent(("o2", "AuthorizePayment", ""), "o2", ("payment-requests", 1), 19, REPLY, now=0.0)
    assert waiting.consumed({("payment-requests", 1): 19}) == set()
    assert waiting.consumed({("payment-requests", 1): 20}) == {REPLY}


def test_moved_partitions_and_finished_orders_are_forgotten() -> None:
    waiting = tracker_with(10)
    waiting.sent(("o9", "ReserveLine", "X"), "o9", REQ, 11, 3, now=0.0)
    waiting.forget_reply_partitions({REPLY})
    assert len(waiting) == 1 and ("o9", "ReserveLine", "X") in waiting
    waiting.forget_order("o9")
    assert len(waiting) == 0
    assert step(waiting, committed=100, end=100, read=100) == []


def test_work_per_step_follows_what_moved() -> None:
    waiting = OutstandingRequests()
    for i in range(10_000):
        waiting.sent(("o", "ReserveLine", str(i)), f"o{i}", REQ, 1_000 + i, REPLY, now=0.0)
    # Only the three requests the consumer passed are examined and marked.
    assert waiting.consumed({REQ: 1_003}) == {REPLY}
    assert len(waiting._to_mark) == 3  # noqa: SLF001 - the cost is the point of this test
