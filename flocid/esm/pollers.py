"""The pollers of event source mappings (SQS; Kinesis and DynamoDB Streams), and the seams they
poll through (``QueueSource``, ``StreamSource``). No moto here: ``flocid.esm.service`` adapts it.

One ``serve_sqs_mapping`` task per enabled mapping (the supervisor in ``flocid.esm.service`` owns
them). Inside it, up to ``MaximumConcurrency`` batch workers (default 5, the number of batches AWS
starts an SQS mapping with) each loop: receive up to BatchSize messages (within the batching
window), drop the ones FilterCriteria rejects (deleting them, as AWS does), invoke the function
synchronously, then settle:

- success: delete the batch; with ``ReportBatchItemFailures`` delete all but the reported
  failures, and a malformed response (an item without a valid ``itemIdentifier``) fails the whole
  batch (peers.md 1.10 item 39);
- function error: delete nothing; the queue's visibility timeout brings the messages back, so its
  redrive policy moves a poison message to the DLQ after ``maxReceiveCount`` receives;
- 429: retry the same batch with exponential backoff; never counted as a function failure.

Workers scale with the queue: a full batch starts one more worker (up to the cap), an empty
receive retires a worker (the last one stays and waits the poll interval). Stopping is cooperative:
``stop`` set, no new receive starts, batches in flight finish, then the task returns.

Streams: one task per shard. Records with the same partition key (Kinesis PartitionKey, DynamoDB
Streams item key) are delivered in order and never in two concurrent batches; up to
ParallelizationFactor batches of a shard are in flight at once (``flocid.esm.shards.ShardLanes``).
A batch is retried until it succeeds, it exceeds MaximumRetryAttempts or MaximumRecordAgeInSeconds
(then its AWS failure record goes to the OnFailure destination and the shard moves on), or, with
BisectBatchOnFunctionError, split in two (a split does not count as a retry). A partial batch
response retries from the lowest failed sequence number. The checkpoint (durable, in the store)
moves past a record once it and every earlier record of the shard is settled
(``flocid.esm.shards.Watermark``), so a restart never skips an unprocessed record.
With TumblingWindowInSeconds the shard's batches run one at a time, grouped by the window of their
arrival time, each invoke carrying the window's state, and a final invoke
(``isFinalInvokeForWindow``, no records) closes the window; the checkpoint moves past a window once
its final invoke is done (``flocid.esm.shards.TumblingWindow``).

Stopping a mapping (disable, delete, shutdown) ends a batch's retries (and a throttled invoke's
backoff) at the next wait: the batch stays unsettled and is read again when the mapping runs
again. Without that, a failing batch under MaximumRetryAttempts -1 never let a mapping stop.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from flocid.esm import filters
from flocid.esm.shards import ShardLanes, TumblingWindow, Watermark, partition_key, window_start
from flocid.lambda_.errors import LambdaError, TooManyRequests

log = logging.getLogger("flocid.esm")

#: Batches in flight per SQS mapping without ScalingConfig (AWS starts with five).
DEFAULT_SQS_CONCURRENCY = 5
BACKOFF_START = 0.05
BACKOFF_MAX = 2.0


@attrs.frozen
class SqsMessage:
    message_id: str
    receipt_handle: str
    record: dict[str, Any]


class QueueSource(Protocol):
    """What the SQS poller needs from a queue service (moto in-process by default)."""

    async def receive(self, queue_arn: str, max_messages: int) -> list[SqsMessage]: ...

    async def delete(self, queue_arn: str, receipt_handles: list[str]) -> None: ...


class Invoke(Protocol):
    async def __call__(self, payload: bytes) -> tuple[bool, bytes]:
        """Invoke the mapping's function: (function succeeded, response payload). Raises
        ``TooManyRequests`` when throttled."""
        ...


@attrs.frozen(kw_only=True)
class SqsPollerConfig:
    uuid: str
    queue_arn: str
    batch_size: int
    window_seconds: float
    max_concurrency: int
    report_failures: bool
    patterns: list[dict[str, Any]]
    poll_interval: float


@attrs.define
class PollerStats:
    batches: int = 0
    succeeded: int = 0
    failed: int = 0
    throttled: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    filtered: int = 0
    #: Records handled successfully (deleted from the queue, or checkpointed past).
    records: int = 0
    last_result: str = "No records processed"


def failed_items(payload: bytes, batch_ids: list[str]) -> list[str] | None:
    """The message ids a ``ReportBatchItemFailures`` response names; ``None`` when the response is
    malformed, which fails the whole batch (as Lambda does)."""
    if not payload.strip():
        return []
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    if doc is None or (isinstance(doc, dict) and doc.get("batchItemFailures") in (None, [])):
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("batchItemFailures"), list):
        return None
    out: list[str] = []
    known = set(batch_ids)
    for item in doc["batchItemFailures"]:
        ident = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(ident, str) or ident not in known:
            return None
        out.append(ident)
    return out


async def serve_sqs_mapping(
    cfg: SqsPollerConfig,
    source: QueueSource,
    invoke: Invoke,
    stop: trio.Event,
    stats: PollerStats,
    on_activity: Callable[[], None] = lambda: None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Poll ``cfg.queue_arn`` into the function until ``stop`` is set (batches in flight finish)."""
    workers = 0
    async with trio.open_nursery() as nursery:

        def spawn() -> None:
            nonlocal workers
            workers += 1
            nursery.start_soon(worker)

        async def worker() -> None:
            nonlocal workers
            try:
                while not stop.is_set():
                    batch = await _collect(cfg, source, stop)
                    on_activity()
                    if not batch:
                        if workers > 1:
                            return
                        with trio.move_on_after(cfg.poll_interval):
                            await stop.wait()
                        continue
                    if len(batch) >= cfg.batch_size and workers < cfg.max_concurrency:
                        spawn()
                    await _run_batch(cfg, source, invoke, batch, stats, stop)
                    on_activity()
            finally:
                workers -= 1

        spawn()
        task_status.started()


async def _collect(cfg: SqsPollerConfig, source: QueueSource, stop: trio.Event) -> list[SqsMessage]:
    """Up to BatchSize messages, waiting up to the batching window for a fuller batch."""
    batch = await source.receive(cfg.queue_arn, min(cfg.batch_size, 10))
    if cfg.window_seconds <= 0 or len(batch) >= cfg.batch_size or not batch:
        return batch
    deadline = trio.current_time() + cfg.window_seconds
    while len(batch) < cfg.batch_size and trio.current_time() < deadline and not stop.is_set():
        more = await source.receive(cfg.queue_arn, min(cfg.batch_size - len(batch), 10))
        if not more:
            with trio.move_on_at(min(deadline, trio.current_time() + cfg.poll_interval)):
                await stop.wait()
        batch.extend(more)
    return batch


async def _run_batch(cfg: SqsPollerConfig, source: QueueSource, invoke: Invoke, batch: list[SqsMessage],
                     stats: PollerStats, stop: trio.Event) -> None:
    passing: list[SqsMessage] = []
    dropped: list[str] = []
    for m in batch:
        if filters.matches_any(cfg.patterns, filters.sqs_view(m.record)):
            passing.append(m)
        else:
            dropped.append(m.receipt_handle)
    if dropped:
        stats.filtered += len(dropped)
        await source.delete(cfg.queue_arn, dropped)
    if not passing:
        return
    payload = json.dumps({"Records": [m.record for m in passing]}, separators=(",", ":")).encode()
    stats.batches += 1
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        ok, response = await _invoke_with_backoff(invoke, payload, stats, stop)
    except _Stopped:
        return  # throttled when the mapping stopped: the visibility timeout brings them back
    except LambdaError as exc:
        # The function is gone or not invocable: leave the messages for the visibility timeout.
        log.warning("event source mapping %s: invoke failed: %s", cfg.uuid, exc.message)
        stats.failed += 1
        stats.last_result = "PROBLEM: Function call failed"
        return
    finally:
        stats.in_flight -= 1
    if not ok:
        stats.failed += 1
        stats.last_result = "OK"
        return
    done = [m.receipt_handle for m in passing]
    if cfg.report_failures:
        failures = failed_items(response, [m.message_id for m in passing])
        if failures is None:
            stats.failed += 1
            return
        bad = set(failures)
        done = [m.receipt_handle for m in passing if m.message_id not in bad]
    stats.succeeded += 1
    stats.records += len(done)
    stats.last_result = "OK"
    if done:
        await source.delete(cfg.queue_arn, done)


class _Stopped(Exception):
    """The mapping was stopped while a batch waited to be retried: the batch is left unsettled
    (SQS: its messages come back after the visibility timeout; streams: the checkpoint stays
    before it, so it is read again when the mapping is enabled again)."""


async def _pause(stop: trio.Event, seconds: float) -> None:
    """A retry's backoff, cut short by a stop (then ``_Stopped``)."""
    with trio.move_on_after(seconds):
        await stop.wait()
    if stop.is_set():
        raise _Stopped


def _retry_delay(attempts: int) -> float:
    """The backoff before a failed stream batch's next try."""
    return float(min(BACKOFF_START * 2 ** min(attempts, 6), BACKOFF_MAX))


async def _invoke_with_backoff(invoke: Invoke, payload: bytes, stats: PollerStats,
                               stop: trio.Event) -> tuple[bool, bytes]:
    delay = BACKOFF_START
    while True:
        try:
            return await invoke(payload)
        except TooManyRequests:
            stats.throttled += 1
            await _pause(stop, delay)
            delay = min(delay * 2, BACKOFF_MAX)



# ---- streams (Kinesis, DynamoDB Streams) -------------------------------------------------------------


@attrs.frozen
class StreamRecord:
    sequence: str
    arrival: float
    record: dict[str, Any]


class StreamSource(Protocol):
    """What a stream poller needs from Kinesis or DynamoDB Streams."""

    async def shards(self, arn: str) -> list[str]: ...

    async def iterator(self, arn: str, shard: str, position: str, after: str | None,
                       timestamp: float | None) -> str: ...

    async def records(self, arn: str, iterator: str, limit: int) -> tuple[str, list[StreamRecord]]: ...


@attrs.frozen(kw_only=True)
class StreamPollerConfig:
    uuid: str
    kind: str
    stream_arn: str
    function_arn: str
    batch_size: int
    starting_position: str
    starting_timestamp: float | None
    max_retries: int
    max_age: int
    bisect: bool
    report_failures: bool
    patterns: list[dict[str, Any]]
    poll_interval: float
    #: ParallelizationFactor: batches of one shard in flight at once (1-10).
    parallelization: int = 1
    #: TumblingWindowInSeconds (0: no window).
    tumbling_window: int = 0


Checkpoint = Callable[[str, str], Awaitable[None]]
OnFailure = Callable[[dict[str, Any]], Awaitable[None]]

#: Records a shard reads ahead of its checkpoint, in batches per lane: bounds what is held in memory
#: while one key's batch keeps failing and the other lanes run on.
READ_AHEAD_BATCHES = 4


@attrs.define
class _Shard:
    """What the tasks of one shard share."""

    cfg: StreamPollerConfig
    source: StreamSource
    invoke: Invoke
    shard: str
    save_checkpoint: Checkpoint
    on_failure: OnFailure | None
    stop: trio.Event
    stats: PollerStats
    on_activity: Callable[[], None]
    clock: Callable[[], float]

    def passes(self, r: StreamRecord) -> bool:
        view = filters.kinesis_view if self.cfg.kind == "kinesis" else (lambda rec: rec)
        return filters.matches_any(self.cfg.patterns, view(r.record))


async def serve_stream_mapping(
    cfg: StreamPollerConfig,
    source: StreamSource,
    invoke: Invoke,
    checkpoints: dict[str, str],
    save_checkpoint: Checkpoint,
    on_failure: OnFailure | None,
    stop: trio.Event,
    stats: PollerStats,
    on_activity: Callable[[], None] = lambda: None,
    *,
    clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One task per shard: read from the checkpoint (or StartingPosition), invoke (up to
    ParallelizationFactor batches at once, or window by window with TumblingWindowInSeconds),
    checkpoint what is settled; failures retried per MaximumRetryAttempts /
    MaximumRecordAgeInSeconds / BisectBatchOnFunctionError, then sent to the OnFailure destination
    and skipped. ``clock`` is the wall clock record arrival times are on (a test's trio clock)."""
    shards = await source.shards(cfg.stream_arn)
    async with trio.open_nursery() as nursery:
        for shard in shards:
            run = _Shard(cfg, source, invoke, shard, save_checkpoint, on_failure, stop, stats, on_activity, clock)
            nursery.start_soon(_serve_shard, run, checkpoints.get(shard))
        task_status.started()


async def _serve_shard(run: _Shard, after: str | None) -> None:
    cfg = run.cfg
    if after is not None:
        it = await run.source.iterator(cfg.stream_arn, run.shard, "AFTER_SEQUENCE_NUMBER", after, None)
    else:
        it = await run.source.iterator(cfg.stream_arn, run.shard, cfg.starting_position, None,
                                       cfg.starting_timestamp)
    if cfg.tumbling_window > 0:
        try:
            await _serve_shard_windowed(run, it)
        except _Stopped:
            return  # mid-window: its records are read again (checkpoints follow final invokes)
    else:
        await _serve_shard_lanes(run, it)


async def _serve_shard_lanes(run: _Shard, it: str) -> None:
    """ParallelizationFactor lanes: the reader queues each record on its key's lane, a free lane
    with records queued starts its next batch, the checkpoint follows the ``Watermark``."""
    cfg = run.cfg
    lanes: ShardLanes[StreamRecord] = ShardLanes(cfg.parallelization, cfg.batch_size)
    mark = Watermark()
    cap = cfg.parallelization * cfg.batch_size * READ_AHEAD_BATCHES
    saved: str | None = None
    save_lock = trio.Lock()
    room = trio.Event()

    async def checkpoint() -> None:
        # One writer at a time, always the newest checkpoint: two batches settling together must
        # not store an older one last.
        nonlocal saved
        async with save_lock:
            cp = mark.checkpoint
            if cp is not None and cp != saved:
                await run.save_checkpoint(run.shard, cp)
                saved = cp

    async with trio.open_nursery() as nursery:

        def dispatch() -> None:
            while not run.stop.is_set() and (got := lanes.next_batch()) is not None:
                nursery.start_soon(deliver, *got)

        async def deliver(lane: int, batch: list[StreamRecord]) -> None:
            try:
                await _deliver_stream_batch(run, batch)
            except _Stopped:
                return  # unsettled: the checkpoint stays before it
            lanes.done(lane)
            mark.settle([r.sequence for r in batch])
            await checkpoint()
            run.on_activity()
            room.set()
            dispatch()

        while not run.stop.is_set():
            free = cap - mark.pending
            if free <= 0:
                room = trio.Event()
                with trio.move_on_after(cfg.poll_interval):
                    await room.wait()
                continue
            it, recs = await run.source.records(cfg.stream_arn, it, min(cfg.batch_size, free))
            run.on_activity()
            recs = [r for r in recs if r.sequence not in mark]  # a record read twice is queued once
            if not recs:
                with trio.move_on_after(cfg.poll_interval):
                    await run.stop.wait()
                continue
            mark.track([r.sequence for r in recs])
            dropped = []
            for r in recs:
                if run.passes(r):
                    lanes.add(r, partition_key(cfg.kind, r.record))
                else:
                    dropped.append(r.sequence)
            if dropped:
                run.stats.filtered += len(dropped)
                mark.settle(dropped)
                await checkpoint()
            dispatch()


async def _serve_shard_windowed(run: _Shard, it: str) -> None:
    """TumblingWindowInSeconds: the shard's batches one at a time (each invoke gets the state the
    previous one returned, so ParallelizationFactor has nothing to run in parallel), grouped by
    the window their arrival time falls in. A window's final invoke comes once a read that started
    after its end found nothing more of it, or a record of a later window arrives. The checkpoint
    moves past a window's records after its final invoke (AWS: "After successful invocation, your
    function checkpoints the sequence number"), so a restart replays an unfinished window from its
    first record with a fresh state (at-least-once)."""
    cfg = run.cfg
    pending: collections.deque[StreamRecord] = collections.deque()
    window: TumblingWindow | None = None
    consumed: str | None = None  # the last record handled, in shard order
    saved: str | None = None

    async def checkpoint() -> None:
        nonlocal saved
        if consumed is not None and consumed != saved:
            await run.save_checkpoint(run.shard, consumed)
            saved = consumed

    while not run.stop.is_set():
        polled_at = run.clock()
        it, recs = await run.source.records(cfg.stream_arn, it, cfg.batch_size)
        run.on_activity()
        pending.extend(recs)
        while pending and not run.stop.is_set():
            if window is not None and not window.contains(pending[0].arrival):
                await _final_invoke(run, window)
                window = None
                await checkpoint()
                continue
            take: list[StreamRecord] = []
            passing: list[StreamRecord] = []
            while pending and len(passing) < cfg.batch_size:
                r = pending[0]
                if window is not None and not window.contains(r.arrival):
                    break
                ok = run.passes(r)
                if ok and window is None:
                    window = TumblingWindow(window_start(r.arrival, cfg.tumbling_window), cfg.tumbling_window,
                                            run.shard, cfg.stream_arn)
                take.append(pending.popleft())
                if ok:
                    passing.append(r)
            run.stats.filtered += len(take) - len(passing)
            if passing:
                assert window is not None
                await _deliver_stream_batch(run, passing, window)
                if window.terminated_early:
                    await _final_invoke(run, window)
                    window.restart_after_early_end()
            consumed = take[-1].sequence
            if window is None:
                await checkpoint()  # only filtered-out records: no window holds them
            run.on_activity()
        if window is not None and not pending and polled_at >= window.end and not run.stop.is_set():
            await _final_invoke(run, window)
            window = None
            await checkpoint()
            run.on_activity()
        if not recs:
            with trio.move_on_after(cfg.poll_interval):
                await run.stop.wait()


def _stream_event(run: _Shard, records: list[StreamRecord], window: TumblingWindow | None, *,
                  final: bool = False) -> bytes:
    doc = (window.event([r.record for r in records], final=final) if window is not None
           else {"Records": [r.record for r in records]})
    return json.dumps(doc, separators=(",", ":")).encode()


async def _invoke_counted(run: _Shard, payload: bytes) -> tuple[bool, bytes]:
    stats = run.stats
    stats.batches += 1
    stats.in_flight += 1
    stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
    try:
        return await _invoke_with_backoff(run.invoke, payload, stats, run.stop)
    except LambdaError:
        return False, b""
    finally:
        stats.in_flight -= 1


async def _final_invoke(run: _Shard, window: TumblingWindow) -> None:  # raises _Stopped
    """The window's last invoke (no records, ``isFinalInvokeForWindow``), retried until it succeeds
    (AWS: "If invocation is unsuccessful, your Lambda function suspends further processing until a
    successful invocation") or MaximumRetryAttempts is exhausted (the window's state is dropped)."""
    attempts = 0
    while True:
        ok, response = await _invoke_counted(run, _stream_event(run, [], window, final=True))
        attempts += 1
        if ok and TumblingWindow.response_state(response) is not None:
            run.stats.succeeded += 1
            run.stats.last_result = "OK"
            return
        run.stats.failed += 1
        run.stats.last_result = "PROBLEM: Function call failed"
        if run.cfg.max_retries != -1 and attempts > run.cfg.max_retries:
            log.warning("event source mapping %s: final invoke of the window at %s on %s failed %d times; "
                        "its state is dropped", run.cfg.uuid, window.start, run.shard, attempts)
            return
        await _pause(run.stop, _retry_delay(attempts))


async def _deliver_stream_batch(run: _Shard, batch: list[StreamRecord], window: TumblingWindow | None = None) -> None:
    cfg, stats = run.cfg, run.stats
    pending = [batch]
    while pending:
        part = pending.pop(0)
        attempts = 0
        while part:
            ok, response = await _invoke_counted(run, _stream_event(run, part, window))
            attempts += 1
            state = TumblingWindow.response_state(response) if window is not None and ok else None
            if window is not None and state is None:
                ok = False  # AWS: a response without a state property is a failed invocation
            partial = False
            if ok and cfg.report_failures:
                failures = failed_items(response, [r.sequence for r in part])
                if failures is None:
                    ok = False
                elif failures:
                    # Retry from the lowest failed sequence number on (AWS's checkpoint rule); the
                    # state of the partial success goes on with the records that came through.
                    first = min(i for i, r in enumerate(part) if r.sequence in set(failures))
                    stats.records += first
                    if first > 0:
                        part = part[first:]
                    if window is not None and state is not None:
                        window.accept(state)
                    ok, partial = False, True
            if ok:
                if window is not None and state is not None:
                    window.accept(state)
                stats.succeeded += 1
                stats.records += len(part)
                stats.last_result = "OK"
                break
            stats.failed += 1
            stats.last_result = "PROBLEM: Function call failed"
            too_old = cfg.max_age != -1 and min(r.arrival for r in part) + cfg.max_age < run.clock()
            exhausted = cfg.max_retries != -1 and attempts > cfg.max_retries
            # AWS: with both BisectBatchOnFunctionError and ReportBatchItemFailures, "the batch is
            # bisected at the returned sequence number and Lambda retries only the remaining records"
            # (with-kinesis, "Bisecting a batch"): the cut above is the bisection.
            if cfg.bisect and not partial and len(part) > 1 and not too_old and not exhausted:
                half = len(part) // 2
                pending[:0] = [part[:half], part[half:]]
                break
            if too_old or exhausted:
                if run.on_failure is not None:
                    await run.on_failure(_failure_record(cfg, run.shard, part, attempts,
                                                         "RecordAgeExceeded" if too_old else "RetryAttemptsExhausted",
                                                         run.clock()))
                break
            # A stop during the backoff raises _Stopped: the batch stays unsettled (read again later).
            await _pause(run.stop, _retry_delay(attempts))


def _failure_record(cfg: StreamPollerConfig, shard: str, part: list[StreamRecord], attempts: int,
                    condition: str, now: float) -> dict[str, Any]:
    def iso(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")

    info_key = "KinesisBatchInfo" if cfg.kind == "kinesis" else "DDBStreamBatchInfo"
    return {
        "requestContext": {"requestId": str(uuid.uuid4()), "functionArn": cfg.function_arn,
                           "condition": condition, "approximateInvokeCount": attempts},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": iso(now),
        info_key: {
            "shardId": shard, "startSequenceNumber": part[0].sequence, "endSequenceNumber": part[-1].sequence,
            "approximateArrivalOfFirstRecord": iso(part[0].arrival),
            "approximateArrivalOfLastRecord": iso(part[-1].arrival),
            "batchSize": len(part), "streamArn": cfg.stream_arn,
        },
    }
