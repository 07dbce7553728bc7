"""Concurrency limits: reserved concurrency per function and the shared region pool. Sans-IO.

AWS (peers.md 1.10 items 22, 25; floci-lambda.md section 4): a function with reserved concurrency
``r`` runs at most ``r`` invocations at once (``ReservedFunctionConcurrentInvocationLimitExceeded``);
functions without a reservation share ``region limit - sum of reservations`` of the region
(``ConcurrentInvocationLimitExceeded``). Limits are read at every acquire, because
PutFunctionConcurrency may change them between two invokes; lowering a limit never touches work
already running. Nothing queues: a full limit answers at once.
"""

from __future__ import annotations

import attrs

from flocid.lambda_.errors import TooManyRequests

RESERVED_REASON = "ReservedFunctionConcurrentInvocationLimitExceeded"
REGION_REASON = "ConcurrentInvocationLimitExceeded"

FunctionKey = tuple[str, str, str]  # (region, account, name)


@attrs.frozen
class Slot:
    """A held concurrency slot; give it back with ``ConcurrencyLimits.release``."""

    function: FunctionKey
    #: True when the slot counts against the region's unreserved pool.
    unreserved: bool


@attrs.frozen
class LimitStatistics:
    in_flight: int
    unreserved_in_flight: dict[tuple[str, str], int]
    throttled: int


class ConcurrencyLimits:
    def __init__(self, region_limit: int) -> None:
        self.region_limit = region_limit
        self._per_function: dict[FunctionKey, int] = {}
        self._unreserved: dict[tuple[str, str], int] = {}
        self._in_flight = 0
        self._throttled = 0

    def in_flight(self, function: FunctionKey) -> int:
        return self._per_function.get(function, 0)

    def acquire_nowait(self, function: FunctionKey, reserved: int | None, reserved_total: int) -> Slot:
        """Take a slot or raise ``TooManyRequests`` with AWS's reason."""
        running = self._per_function.get(function, 0)
        if reserved is not None:
            if running >= reserved:
                self._throttled += 1
                raise TooManyRequests(RESERVED_REASON)
            slot = Slot(function, unreserved=False)
        else:
            region = function[:2]
            pool = max(0, self.region_limit - reserved_total)
            used = self._unreserved.get(region, 0)
            if used >= pool:
                self._throttled += 1
                raise TooManyRequests(REGION_REASON)
            self._unreserved[region] = used + 1
            slot = Slot(function, unreserved=True)
        self._per_function[function] = running + 1
        self._in_flight += 1
        return slot

    def release(self, slot: Slot) -> None:
        left = self._per_function[slot.function] - 1
        if left:
            self._per_function[slot.function] = left
        else:
            del self._per_function[slot.function]
        if slot.unreserved:
            region = (slot.function[0], slot.function[1])
            self._unreserved[region] -= 1
        self._in_flight -= 1

    def statistics(self) -> LimitStatistics:
        return LimitStatistics(
            in_flight=self._in_flight,
            unreserved_in_flight={k: v for k, v in self._unreserved.items() if v},
            throttled=self._throttled,
        )
