"""Concurrency limits: reserved concurrency, the shared region pool, changes between calls."""

from __future__ import annotations

import pytest

from flocid.invoke.limits import REGION_REASON, RESERVED_REASON, ConcurrencyLimits
from flocid.lambda_.errors import TooManyRequests

F = ("us-east-1", "000000000000", "f")
G = ("us-east-1", "000000000000", "g")
H = ("us-east-1", "000000000000", "h")
OTHER_REGION = ("eu-west-1", "000000000000", "f")


def throttled(limits: ConcurrencyLimits, fn: tuple[str, str, str], reserved: int | None, total: int) -> str:
    with pytest.raises(TooManyRequests) as info:
        limits.acquire_nowait(fn, reserved, total)
    err = info.value
    assert err.status == 429 and err.code == "TooManyRequestsException"
    assert err.message == "Rate Exceeded."
    assert err.headers["Retry-After"]
    return str(err.extra["Reason"])


def test_reserved_limit() -> None:
    lim = ConcurrencyLimits(1000)
    a = lim.acquire_nowait(F, 2, 2)
    b = lim.acquire_nowait(F, 2, 2)
    assert throttled(lim, F, 2, 2) == RESERVED_REASON
    lim.release(a)
    c = lim.acquire_nowait(F, 2, 2)
    lim.release(b)
    lim.release(c)
    assert lim.in_flight(F) == 0


def test_reserved_zero_throttles_everything() -> None:
    lim = ConcurrencyLimits(1000)
    assert throttled(lim, F, 0, 0) == RESERVED_REASON


def test_region_pool_is_limit_minus_reservations() -> None:
    lim = ConcurrencyLimits(10)
    # g reserves 7: unreserved functions share 3.
    slots = [lim.acquire_nowait(F, None, 7) for _ in range(2)]
    slots.append(lim.acquire_nowait(H, None, 7))
    assert throttled(lim, F, None, 7) == REGION_REASON
    assert throttled(lim, H, None, 7) == REGION_REASON
    # The reserved function is not affected by the region pool being full.
    reserved = [lim.acquire_nowait(G, 7, 7) for _ in range(7)]
    assert throttled(lim, G, 7, 7) == RESERVED_REASON
    # Other regions are independent pools.
    other = lim.acquire_nowait(OTHER_REGION, None, 0)
    for s in [*slots, *reserved, other]:
        lim.release(s)
    assert lim.statistics().in_flight == 0
    assert lim.statistics().throttled == 3


def test_lowering_reserved_keeps_in_flight_and_throttles_new() -> None:
    lim = ConcurrencyLimits(1000)
    running = [lim.acquire_nowait(F, 5, 5) for _ in range(3)]
    # PutFunctionConcurrency lowers f to 1 while three run: nothing is killed, new calls throttle.
    assert throttled(lim, F, 1, 1) == RESERVED_REASON
    lim.release(running[0])
    lim.release(running[1])
    assert throttled(lim, F, 1, 1) == RESERVED_REASON
    lim.release(running[2])
    s = lim.acquire_nowait(F, 1, 1)
    lim.release(s)


def test_reservation_added_while_running_unreserved() -> None:
    lim = ConcurrencyLimits(10)
    unreserved = [lim.acquire_nowait(F, None, 0) for _ in range(3)]
    # f now reserves 2: its three unreserved runs still count against it.
    assert throttled(lim, F, 2, 2) == RESERVED_REASON
    for s in unreserved:
        lim.release(s)  # released from the region pool they were taken from
    assert lim.statistics().unreserved_in_flight == {}
    a = lim.acquire_nowait(F, 2, 2)
    b = lim.acquire_nowait(F, 2, 2)
    # The region pool is back to 10 - 2 = 8 for others.
    others = [lim.acquire_nowait(G, None, 2) for _ in range(8)]
    assert throttled(lim, G, None, 2) == REGION_REASON
    for s in [a, b, *others]:
        lim.release(s)


def test_raising_region_reservations_shrinks_pool_for_new_calls() -> None:
    lim = ConcurrencyLimits(10)
    running = [lim.acquire_nowait(F, None, 0) for _ in range(5)]
    # Someone reserves 6 elsewhere: pool is 4, five already run; new unreserved calls throttle.
    assert throttled(lim, H, None, 6) == REGION_REASON
    for s in running:
        lim.release(s)
    s = lim.acquire_nowait(H, None, 6)
    lim.release(s)
