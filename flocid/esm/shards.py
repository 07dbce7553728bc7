"""Sans-IO bookkeeping of one stream shard (Kinesis, DynamoDB Streams): no trio, no clock, no moto.
``flocid.esm.pollers`` drives these with the records it reads and the batches it settles.

- ``ShardLanes``: ParallelizationFactor. Up to N batches of one shard in flight at once; records
  with the same partition key (Kinesis ``PartitionKey``; DynamoDB Streams: the item's key) stay in
  one lane while any of them is queued or in flight, so they keep their order and are never in two
  concurrent batches. AWS: "Lambda can process up to 10 batches in each shard simultaneously ...
  Lambda still ensures in-order processing at the partition-key level"
  (https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html, "Polling and batching streams").
- ``Watermark``: the shard checkpoint. It only moves past a record once that record and every
  earlier record of the shard is settled (processed, filtered out, or discarded to OnFailure), so a
  restart never skips an unprocessed record (records after it may come again: at-least-once).
- ``TumblingWindow``: TumblingWindowInSeconds (AWS's "Time windows",
  https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-windows.html and
  services-ddb-windows.html): the window a record belongs to (by its arrival timestamp), the state
  carried from one invoke of a window to the next, the event fields of each invoke and the checks
  on its ``TimeWindowEventResponse``.
"""

from __future__ import annotations

import collections
import datetime
import json
import math
from typing import Any, Generic, TypeVar

R = TypeVar("R")


def partition_key(kind: str, record: dict[str, Any]) -> str:
    """The key whose records must stay in order: a Kinesis record's PartitionKey, a DynamoDB
    Streams record's item key (its ``Keys``, canonical JSON)."""
    if kind == "kinesis":
        return str((record.get("kinesis") or {}).get("partitionKey", ""))
    return json.dumps((record.get("dynamodb") or {}).get("Keys") or {}, sort_keys=True, separators=(",", ":"))


class ShardLanes(Generic[R]):
    """Up to ``lanes`` batches of one shard in flight; one key in one lane at a time.

    ``add`` queues a record on the lane its key already occupies, else on the least loaded lane.
    ``next_batch`` hands out a batch (up to ``batch_size`` records, in order) of a lane that is
    free and has records queued, and marks the lane busy; ``done`` frees the lane and releases the
    batch's keys (a key with nothing left queued or in flight may then go to any lane).
    """

    def __init__(self, lanes: int, batch_size: int) -> None:
        if lanes < 1 or batch_size < 1:
            raise ValueError("lanes and batch_size must be at least 1")
        self.batch_size = batch_size
        self._queues: list[collections.deque[tuple[R, str]]] = [collections.deque() for _ in range(lanes)]
        self._busy: list[list[tuple[R, str]] | None] = [None] * lanes
        #: key -> (lane, records of the key queued or in flight there)
        self._keys: dict[str, tuple[int, int]] = {}

    @property
    def lanes(self) -> int:
        return len(self._queues)

    def load(self, lane: int) -> int:
        busy = self._busy[lane]
        return len(self._queues[lane]) + (len(busy) if busy is not None else 0)

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues)

    @property
    def in_flight(self) -> int:
        return sum(1 for b in self._busy if b is not None)

    def lane_of(self, key: str) -> int | None:
        held = self._keys.get(key)
        return held[0] if held is not None else None

    def add(self, record: R, key: str) -> int:
        held = self._keys.get(key)
        if held is not None:
            lane, count = held
        else:
            lane, count = min(range(self.lanes), key=lambda i: (self.load(i), i)), 0
        self._keys[key] = (lane, count + 1)
        self._queues[lane].append((record, key))
        return lane

    def next_batch(self) -> tuple[int, list[R]] | None:
        for lane, queue in enumerate(self._queues):
            if self._busy[lane] is None and queue:
                batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
                self._busy[lane] = batch
                return lane, [r for r, _k in batch]
        return None

    def done(self, lane: int) -> None:
        batch = self._busy[lane]
        if batch is None:
            raise ValueError(f"lane {lane} has no batch in flight")
        self._busy[lane] = None
        for _r, key in batch:
            held_lane, count = self._keys[key]
            if count <= 1:
                del self._keys[key]
            else:
                self._keys[key] = (held_lane, count - 1)


class Watermark:
    """The checkpoint of one shard: the last sequence number at and before which every record read
    is settled. ``track`` records read (in shard order), ``settle`` marks some done and answers the
    new checkpoint when it moved."""

    def __init__(self) -> None:
        self._open: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self.checkpoint: str | None = None

    @property
    def pending(self) -> int:
        """Records read and not yet behind the checkpoint (settled or not)."""
        return len(self._open)

    def __contains__(self, sequence: str) -> bool:
        return sequence in self._open

    def track(self, sequences: list[str]) -> None:
        for seq in sequences:
            if seq in self._open:
                raise ValueError(f"sequence {seq} read twice")
            self._open[seq] = False

    def settle(self, sequences: list[str]) -> str | None:
        for seq in sequences:
            if seq not in self._open:
                raise ValueError(f"sequence {seq} is not outstanding")
            self._open[seq] = True
        moved = None
        while self._open:
            seq, settled = next(iter(self._open.items()))
            if not settled:
                break
            self._open.popitem(last=False)
            moved = seq
        if moved is not None:
            self.checkpoint = moved
        return moved


#: "Your state can be a maximum of 1 MB per shard. If it exceeds that size, Lambda terminates the
#: window early." (services-kinesis-windows)
MAX_STATE_BYTES = 1024 * 1024


def window_start(arrival: float, seconds: int) -> float:
    """AWS: "Lambda determines tumbling window boundaries based on the time when records were
    inserted into the stream" - windows of ``seconds`` aligned on the epoch."""
    return math.floor(arrival / seconds) * seconds


def _iso(t: float) -> str:
    # The shape of AWS's KinesisTimeWindowEvent example: "2020-12-09T07:04:00Z".
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TumblingWindow:
    """One open window of one shard.

    Every invoke of the window gets ``window``, ``state`` (what the previous invoke of the window
    returned; ``{}`` at first), ``shardId``, ``eventSourceARN``, ``isFinalInvokeForWindow`` and
    ``isWindowTerminatedEarly`` next to ``Records`` (AWS's KinesisTimeWindowEvent /
    DynamodbTimeWindowEvent). The response must carry a ``state`` object ("If the response does
    not contain a state property, Lambda considers this a failed invocation"); it becomes the state
    of the next invoke. A state over ``MAX_STATE_BYTES`` ends the window early: the next invoke is a
    final one with ``isWindowTerminatedEarly`` true, after which the same window goes on with a
    fresh state.
    """

    def __init__(self, start: float, seconds: int, shard: str, source_arn: str) -> None:
        self.start = start
        self.end = start + seconds
        self.shard = shard
        self.source_arn = source_arn
        self.state: dict[str, Any] = {}
        self.terminated_early = False

    def contains(self, arrival: float) -> bool:
        """A record arriving before the window's end belongs to it (a later record's timestamp can
        only be lower by clock skew: it is counted in the open window, never in a closed one)."""
        return arrival < self.end

    def event(self, records: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
        return {
            "Records": records,
            "window": {"start": _iso(self.start), "end": _iso(self.end)},
            "state": self.state,
            "shardId": self.shard,
            "eventSourceARN": self.source_arn,
            "isFinalInvokeForWindow": final,
            "isWindowTerminatedEarly": final and self.terminated_early,
        }

    @staticmethod
    def response_state(payload: bytes) -> dict[str, Any] | None:
        """The ``state`` of a TimeWindowEventResponse, or None when there is none (a failed invoke)."""
        try:
            doc = json.loads(payload) if payload.strip() else None
        except ValueError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("state"), dict):
            return None
        state: dict[str, Any] = doc["state"]
        return state

    def accept(self, state: dict[str, Any]) -> None:
        """Carry ``state`` to the next invoke; past the size limit the window ends early."""
        self.state = state
        if len(json.dumps(state, separators=(",", ":")).encode()) > MAX_STATE_BYTES:
            self.terminated_early = True

    def restart_after_early_end(self) -> None:
        """After the early final invoke: the same window goes on with a fresh state."""
        self.state = {}
        self.terminated_early = False
