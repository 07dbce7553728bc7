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

Streams: one task per shard, records in order. A batch is retried until it succeeds, it exceeds
MaximumRetryAttempts or MaximumRecordAgeInSeconds (then its AWS failure record goes to the
OnFailure destination and the shard moves on), or, with BisectBatchOnFunctionError, split in two
(a split does not count as a retry). A partial batch response retries from the lowest failed
sequence number. The checkpoint (durable, in the store) advances after each settled batch.
ParallelizationFactor and TumblingWindowInSeconds are stored but not acted upon.
"""

from __future__ import annotations

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
                    await _run_batch(cfg, source, invoke, batch, stats)
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
                     stats: PollerStats) -> None:
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
        ok, response = await _invoke_with_backoff(invoke, payload, stats)
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


async def _invoke_with_backoff(invoke: Invoke, payload: bytes, stats: PollerStats) -> tuple[bool, bytes]:
    delay = BACKOFF_START
    while True:
        try:
            return await invoke(payload)
        except TooManyRequests:
            stats.throttled += 1
            await trio.sleep(delay)
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


Checkpoint = Callable[[str, str], Awaitable[None]]
OnFailure = Callable[[dict[str, Any]], Awaitable[None]]


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
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One task per shard, each in order: read from the checkpoint (or StartingPosition), invoke,
    checkpoint after success; failures retried per MaximumRetryAttempts / MaximumRecordAgeInSeconds /
    BisectBatchOnFunctionError, then sent to the OnFailure destination and skipped."""
    shards = await source.shards(cfg.stream_arn)
    async with trio.open_nursery() as nursery:
        for shard in shards:
            nursery.start_soon(_serve_shard, cfg, source, invoke, shard, checkpoints.get(shard),
                               save_checkpoint, on_failure, stop, stats, on_activity)
        task_status.started()


async def _serve_shard(cfg: StreamPollerConfig, source: StreamSource, invoke: Invoke, shard: str,
                       after: str | None, save_checkpoint: Checkpoint, on_failure: OnFailure | None,
                       stop: trio.Event, stats: PollerStats, on_activity: Callable[[], None]) -> None:
    if after is not None:
        it = await source.iterator(cfg.stream_arn, shard, "AFTER_SEQUENCE_NUMBER", after, None)
    else:
        it = await source.iterator(cfg.stream_arn, shard, cfg.starting_position, None, cfg.starting_timestamp)
    view = filters.kinesis_view if cfg.kind == "kinesis" else (lambda r: r)
    while not stop.is_set():
        it, recs = await source.records(cfg.stream_arn, it, cfg.batch_size)
        on_activity()
        if not recs:
            with trio.move_on_after(cfg.poll_interval):
                await stop.wait()
            continue
        passing = [r for r in recs if filters.matches_any(cfg.patterns, view(r.record))]
        stats.filtered += len(recs) - len(passing)
        if passing:
            await _deliver_stream_batch(cfg, invoke, shard, passing, on_failure, stats)
        await save_checkpoint(shard, recs[-1].sequence)
        on_activity()


async def _deliver_stream_batch(cfg: StreamPollerConfig, invoke: Invoke, shard: str, batch: list[StreamRecord],
                                on_failure: OnFailure | None, stats: PollerStats) -> None:
    pending = [batch]
    while pending:
        part = pending.pop(0)
        attempts = 0
        while part:
            payload = json.dumps({"Records": [r.record for r in part]}, separators=(",", ":")).encode()
            stats.batches += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                ok, response = await _invoke_with_backoff(invoke, payload, stats)
            except LambdaError:
                ok, response = False, b""
            finally:
                stats.in_flight -= 1
            attempts += 1
            if ok and cfg.report_failures:
                failures = failed_items(response, [r.sequence for r in part])
                if failures is None:
                    ok = False
                elif failures:
                    # Retry from the lowest failed sequence number on (AWS's checkpoint rule).
                    first = min(i for i, r in enumerate(part) if r.sequence in set(failures))
                    if first > 0:
                        part = part[first:]
                    ok = False
            if ok:
                stats.succeeded += 1
                stats.records += len(part)
                stats.last_result = "OK"
                break
            stats.failed += 1
            stats.last_result = "PROBLEM: Function call failed"
            too_old = cfg.max_age != -1 and min(r.arrival for r in part) + cfg.max_age < _now()
            exhausted = cfg.max_retries != -1 and attempts > cfg.max_retries
            if cfg.bisect and len(part) > 1 and not too_old and not exhausted:
                half = len(part) // 2
                pending[:0] = [part[:half], part[half:]]
                break
            if too_old or exhausted:
                if on_failure is not None:
                    await on_failure(_failure_record(cfg, shard, part, attempts,
                                                     "RecordAgeExceeded" if too_old else "RetryAttemptsExhausted"))
                break
            await trio.sleep(min(BACKOFF_START * 2 ** min(attempts, 6), BACKOFF_MAX))


def _now() -> float:
    return time.time()


def _failure_record(cfg: StreamPollerConfig, shard: str, part: list[StreamRecord], attempts: int,
                    condition: str) -> dict[str, Any]:
    def iso(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")

    info_key = "KinesisBatchInfo" if cfg.kind == "kinesis" else "DDBStreamBatchInfo"
    return {
        "requestContext": {"requestId": str(uuid.uuid4()), "functionArn": cfg.function_arn,
                           "condition": condition, "approximateInvokeCount": attempts},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": iso(_now()),
        info_key: {
            "shardId": shard, "startSequenceNumber": part[0].sequence, "endSequenceNumber": part[-1].sequence,
            "approximateArrivalOfFirstRecord": iso(part[0].arrival),
            "approximateArrivalOfLastRecord": iso(part[-1].arrival),
            "batchSize": len(part), "streamArn": cfg.stream_arn,
        },
    }
