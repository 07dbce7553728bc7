"""Event source mappings: the CRUD operations (AWS's shapes, states and validation) and the ESM
supervisor that runs one poller task per enabled mapping.

    EsmService.serve  (start protocol, in the root nursery)
    └── supervisor nursery
          ├── settle tasks     Creating/Enabling/Updating/Disabling/Deleting -> Enabled/Disabled/gone
          └── one poller per enabled mapping (flocid.esm.pollers), each in its own cancel scope

A mapping is a dict in AWS's response shape plus private ``_``-keys (where it lives, which function);
it is written through to ``flocid.esm.store`` on every change, so mappings survive a restart and their
pollers restart with the daemon. Stopping a poller is cooperative: its ``stop`` event is set and
the supervisor waits for batches in flight to finish before reporting Disabled or deleting.

SQS, Kinesis and DynamoDB Streams are polled through the embedded moto backends (``MotoQueues``,
``MotoStreams``); stream checkpoints are durable in the store.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import time
import uuid as uuidlib
from typing import Any

import attrs
import trio

from flocid.config import Settings
from flocid.control import ControlPlane, Ctx
from flocid.esm import filters
from flocid.esm.pollers import (
    DEFAULT_SQS_CONCURRENCY,
    PollerStats,
    SqsMessage,
    SqsPollerConfig,
    StreamPollerConfig,
    StreamRecord,
    serve_sqs_mapping,
    serve_stream_mapping,
)
from flocid.esm.store import EsmStore
from flocid.lambda_.errors import (
    InvalidParameterValue,
    LambdaError,
    ResourceConflict,
    ResourceInUse,
    ResourceNotFound,
    ValidationError,
)

log = logging.getLogger("flocid.esm")

Body = dict[str, Any]
NOT_FOUND = "The resource you requested does not exist."
_POSITIONS = ("LATEST", "AT_TIMESTAMP", "TRIM_HORIZON")
_UPDATABLE = {
    "FunctionName", "Enabled", "BatchSize", "FilterCriteria", "MaximumBatchingWindowInSeconds",
    "DestinationConfig", "MaximumRecordAgeInSeconds", "BisectBatchOnFunctionError",
    "MaximumRetryAttempts", "ParallelizationFactor", "TumblingWindowInSeconds", "FunctionResponseTypes",
    "ScalingConfig", "KMSKeyArn", "MetricsConfig",
}


def source_kind(arn: Any) -> str | None:
    """``sqs`` / ``kinesis`` / ``dynamodb`` for a supported event source ARN, else None."""
    if not isinstance(arn, str):
        return None
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        return None
    service = parts[2]
    if service == "sqs" and parts[5]:
        return "sqs"
    if service == "kinesis" and parts[5].startswith("stream/"):
        return "kinesis"
    if service == "dynamodb" and "/stream/" in parts[5]:
        return "dynamodb"
    return None


def _arn_parts(arn: str) -> tuple[str, str, str]:
    """(region, account, resource) of an ARN."""
    parts = arn.split(":", 5)
    return parts[3], parts[4], parts[5]


def _int_field(body: Body, key: str, lo: int, hi: int, wire: str) -> int | None:
    val = body.get(key)
    if val is None:
        return None
    if not isinstance(val, int) or isinstance(val, bool):
        raise ValidationError(f"1 validation error detected: Value '{val}' at '{wire}' failed to satisfy "
                              "constraint: Member must be an integer")
    if val < lo:
        raise ValidationError(f"1 validation error detected: Value '{val}' at '{wire}' failed to satisfy "
                              f"constraint: Member must have value greater than or equal to {lo}")
    if val > hi:
        raise ValidationError(f"1 validation error detected: Value '{val}' at '{wire}' failed to satisfy "
                              f"constraint: Member must have value less than or equal to {hi}")
    return val


class MotoQueues:
    """``QueueSource`` over the embedded moto SQS backend (every call through ``Services._run``)."""

    def __init__(self, services: Any) -> None:
        self.services = services

    @staticmethod
    def _backend(arn: str) -> tuple[Any, str]:
        from moto.sqs.models import sqs_backends

        region, account, name = _arn_parts(arn)
        return sqs_backends[account][region], name

    def _exists(self, arn: str) -> bool:
        from moto.sqs.exceptions import QueueDoesNotExist

        backend, name = self._backend(arn)
        try:
            backend.get_queue(name)
        except QueueDoesNotExist:
            return False
        return True

    async def exists(self, arn: str) -> bool:
        return bool(await self.services._run(self._exists, arn))

    def _receive(self, arn: str, count: int) -> list[SqsMessage]:
        from moto.sqs.exceptions import QueueDoesNotExist

        backend, name = self._backend(arn)
        region, account, _ = _arn_parts(arn)
        try:
            queue = backend.get_queue(name)
        except QueueDoesNotExist:
            return []
        fifo = bool(getattr(queue, "fifo_queue", False))
        return [SqsMessage(m.id, str(m.receipt_handle), _sqs_record(m, arn, region, fifo))
                for m in _receive_now(queue, count)]

    async def receive(self, queue_arn: str, max_messages: int) -> list[SqsMessage]:
        out: list[SqsMessage] = await self.services._run(self._receive, queue_arn, max_messages)
        return out

    def _delete(self, arn: str, handles: list[str]) -> None:
        backend, name = self._backend(arn)
        for h in handles:
            try:
                backend.delete_message(name, h)
            except Exception as exc:  # a stale handle: the message came back and went elsewhere
                log.debug("delete of a message from %s failed: %s", arn, exc)

    async def delete(self, queue_arn: str, receipt_handles: list[str]) -> None:
        await self.services._run(self._delete, queue_arn, receipt_handles)
        self.services.mark_changed("sqs")  # else a kill -9 would bring the handled messages back

    def _send(self, arn: str, body: str) -> None:
        backend, name = self._backend(arn)
        backend.send_message(name, body)

    async def send(self, queue_arn: str, body: str) -> None:
        await self.services._run(self._send, queue_arn, body)
        self.services.mark_changed("sqs")

    def _stream_exists(self, kind: str, arn: str) -> bool:
        region, account, resource = _arn_parts(arn)
        try:
            if kind == "kinesis":
                from moto.kinesis.models import kinesis_backends

                kinesis_backends[account][region].describe_stream(stream_arn=arn, stream_name=None)
            else:
                from moto.dynamodbstreams.models import dynamodbstreams_backends

                dynamodbstreams_backends[account][region].describe_stream(arn)
        except Exception:
            return False
        return True

    async def stream_exists(self, kind: str, arn: str) -> bool:
        return bool(await self.services._run(self._stream_exists, kind, arn))


class MotoStreams:
    """``StreamSource`` over moto's Kinesis or DynamoDB Streams backend."""

    def __init__(self, services: Any, kind: str, role: str) -> None:
        self.services = services
        self.kind = kind
        self.role = role

    def _kinesis(self, arn: str) -> Any:
        from moto.kinesis.models import kinesis_backends

        region, account, _ = _arn_parts(arn)
        return kinesis_backends[account][region]

    def _ddb(self, arn: str) -> Any:
        from moto.dynamodbstreams.models import dynamodbstreams_backends

        region, account, _ = _arn_parts(arn)
        return dynamodbstreams_backends[account][region]

    def _shards(self, arn: str) -> list[str]:
        if self.kind == "kinesis":
            stream = self._kinesis(arn).describe_stream(stream_arn=arn, stream_name=None)
            return sorted(str(sh.shard_id) for sh in stream.shards.values())
        return [str(s["ShardId"]) for s in self._ddb(arn).describe_stream(arn)["Shards"]]

    async def shards(self, arn: str) -> list[str]:
        out: list[str] = await self.services._run(self._shards, arn)
        return out

    def _last_sequence(self, arn: str, shard: str) -> int:
        """The shard's last sequence number (0 when it holds no record)."""
        if self.kind == "kinesis":
            stream = self._kinesis(arn).describe_stream(stream_arn=arn, stream_name=None)
            return int(stream.get_shard(shard).get_max_sequence_number())
        table = self._ddb(arn)._get_table_from_arn(arn)
        if table.stream_shard is None:
            return 0
        return int(table.stream_shard.starting_sequence_number) + len(table.stream_shard.items) - 1

    def _iterator(self, arn: str, shard: str, position: str, after: str | None, ts: float | None) -> str:
        if after is not None and int(after) > self._last_sequence(arn, shard):
            # The checkpoint is past the shard's end: the stream lost records the mapping had seen (a
            # kill -9 restored an older services snapshot, or the stream was deleted and created
            # again under the same ARN). moto numbers the next records on from the shard's end, so
            # reading after the checkpoint would skip each new record until the count caught up.
            # From the start instead: a record may come again (at-least-once, as on AWS), none is lost.
            log.warning("event source mapping checkpoint %s is past the end of %s %s; reading the shard "
                        "from TRIM_HORIZON", after, arn, shard)
            position, after = "TRIM_HORIZON", None
        if self.kind == "kinesis":
            at = datetime.datetime.fromtimestamp(ts or 0, datetime.UTC)
            return str(self._kinesis(arn).get_shard_iterator(
                stream_arn=arn, stream_name=None, shard_id=shard, shard_iterator_type=position,
                starting_sequence_number=int(after) if after else 0, at_timestamp=at))
        it = self._ddb(arn).get_shard_iterator(arn, shard, position, int(after) if after else None)
        return str(it.arn)

    async def iterator(self, arn: str, shard: str, position: str, after: str | None,
                       timestamp: float | None) -> str:
        return str(await self.services._run(self._iterator, arn, shard, position, after, timestamp))

    def _records(self, arn: str, iterator: str, limit: int) -> tuple[str, list[StreamRecord]]:
        region, account, _ = _arn_parts(arn)
        if self.kind == "kinesis":
            nxt, recs, _behind = self._kinesis(arn).get_records(stream_arn=arn, shard_iterator=iterator, limit=limit)
            shard = _kinesis_shard_of(iterator)
            out = [StreamRecord(str(r.sequence_number), float(r.created_at), {
                "kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": r.partition_key,
                            "sequenceNumber": str(r.sequence_number), "data": r.data,
                            "approximateArrivalTimestamp": float(r.created_at)},
                "eventSource": "aws:kinesis", "eventVersion": "1.0",
                "eventID": f"{shard}:{r.sequence_number}", "eventName": "aws:kinesis:record",
                "invokeIdentityArn": self.role, "awsRegion": region, "eventSourceARN": arn,
            }) for r in recs]
            return str(nxt), out
        got = self._ddb(arn).get_records(iterator, limit)
        doc = json.loads(got) if isinstance(got, str) else got
        out = []
        for r in doc.get("Records", []):
            r = dict(r)
            r["eventSourceARN"] = arn
            r.setdefault("awsRegion", region)
            dyn = dict(r.get("dynamodb", {}))
            stamp = dyn.get("ApproximateCreationDateTime") or 0
            created = stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)
            # AWS sends epoch seconds; the invoke payload must be JSON.
            dyn["ApproximateCreationDateTime"] = int(created)
            r["dynamodb"] = dyn
            out.append(StreamRecord(str(dyn.get("SequenceNumber")), created, r))
        # Each GetRecords hands out a new iterator; drop the used one so moto's table stays small.
        self._ddb(arn).shard_iterators.pop(iterator, None)
        return str(doc.get("NextShardIterator") or iterator), out

    async def records(self, arn: str, iterator: str, limit: int) -> tuple[str, list[StreamRecord]]:
        out: tuple[str, list[StreamRecord]] = await self.services._run(self._records, arn, iterator, limit)
        return out


def _receive_now(queue: Any, count: int) -> list[Any]:
    """moto's ReceiveMessage (wait 0) without its per-message cost: moto recomputes every queue
    attribute, O(queue length), for each message it returns, so a 10-message receive on a queue of
    1,000 takes ~0.6 s. Same rules: visible and not delayed, FIFO groups in flight skipped, the
    redrive policy applied at receive time, the queue's own visibility timeout (Lambda uses it; it
    must cover the function's timeout). Runs in moto's thread, like every moto call."""
    now_ms = time.time() * 1000
    retention_ms = int(queue.message_retention_period) * 1000
    vt = int(queue.visibility_timeout)
    pending = queue.pending_messages
    groups = {m.group_id for m in pending if m.group_id is not None and now_ms <= m.visible_at}
    redrive = queue.redrive_policy if queue.dead_letter_queue is not None else None
    result: list[Any] = []
    to_dlq: list[Any] = []
    for message in list(queue._messages):
        if now_ms <= message.visible_at or now_ms < message.delayed_until:
            continue
        pending.discard(message)  # visible again: its consumer timed out
        if queue.fifo_queue and message.group_id and message.group_id in groups:
            continue
        if redrive and message.approximate_receive_count >= int(redrive["maxReceiveCount"]):
            to_dlq.append(message)
            continue
        if message.sent_timestamp is not None and message.sent_timestamp + retention_ms <= now_ms:
            continue
        pending.add(message)
        message.mark_received(visibility_timeout=vt)
        result.append(message)
        if len(result) >= count:
            break
    for message in to_dlq:
        queue._messages.remove(message)
        queue.dead_letter_queue.add_message(message)
    return result


def _kinesis_shard_of(iterator: str) -> str:
    from moto.kinesis.utils import decompose_shard_iterator

    return str(decompose_shard_iterator(iterator)[1])


def _sqs_record(m: Any, arn: str, region: str, fifo: bool) -> Body:
    attrs_: Body = {
        "ApproximateReceiveCount": str(m.approximate_receive_count),
        "SentTimestamp": str(m.sent_timestamp),
        "SenderId": str(m.sender_id),
        "ApproximateFirstReceiveTimestamp": str(m.approximate_first_receive_timestamp),
    }
    if fifo:
        attrs_["SequenceNumber"] = str(m.sequence_number)
        attrs_["MessageGroupId"] = str(m.group_id)
        attrs_["MessageDeduplicationId"] = str(m.deduplication_id)
    mattrs: Body = {}
    for name, a in (m.message_attributes or {}).items():
        dtype = a.get("data_type") or a.get("DataType") or "String"
        out: Body = {"stringListValues": [], "binaryListValues": [], "dataType": dtype}
        sval = a.get("string_value", a.get("StringValue"))
        bval = a.get("binary_value", a.get("BinaryValue"))
        if sval is not None:
            out["stringValue"] = sval
        if bval is not None:
            out["binaryValue"] = bval if isinstance(bval, str) else base64.b64encode(bval).decode()
        mattrs[name] = out
    rec: Body = {
        "messageId": m.id, "receiptHandle": m.receipt_handle, "body": m.body, "attributes": attrs_,
        "messageAttributes": mattrs, "md5OfBody": m.body_md5,
    }
    if mattrs:
        rec["md5OfMessageAttributes"] = m.attribute_md5
    rec.update({"eventSource": "aws:sqs", "eventSourceARN": arn, "awsRegion": region})
    return rec


@attrs.define
class _Poller:
    stop: trio.Event
    done: trio.Event
    stats: PollerStats


class EsmService:
    def __init__(self, settings: Settings, control: ControlPlane, invoker: Any, services: Any,
                 store: EsmStore | None = None) -> None:
        self.settings = settings
        self.control = control
        self.invoker = invoker
        self.queues: Any = MotoQueues(services) if services is not None else None
        self.store = store or EsmStore(settings.data_dir / "esm.db")
        self.mappings: dict[str, Body] = {m["UUID"]: m for m in self.store.load()}
        self.pollers: dict[str, _Poller] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._db = trio.CapacityLimiter(1)
        self._nursery: trio.Nursery | None = None
        self._activity = trio.Event()

    # ---- supervisor ------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the pollers of enabled mappings (restarted from the store) until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for uid in list(self.mappings):
                    nursery.start_soon(self._settle, uid)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.store.close)

    async def drain(self) -> None:
        """Stop every poller, letting batches in flight finish (a graceful daemon stop calls this
        before it waits for invocations in flight, so no new batch starts meanwhile)."""
        running = list(self.pollers.values())
        for p in running:
            p.stop.set()
        for p in running:
            await p.done.wait()

    def _kick(self, uid: str) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._settle, uid)

    async def _save(self, m: Body) -> None:
        await trio.to_thread.run_sync(self.store.put, m["UUID"], m, limiter=self._db)

    async def _settle(self, uid: str) -> None:
        """Bring one mapping's poller in line with its stored state, then record the final state."""
        lock = self._locks.setdefault(uid, trio.Lock())
        async with lock:
            m = self.mappings.get(uid)
            running = self.pollers.get(uid)
            if running is not None:
                # Any change restarts the poller with the new settings; batches in flight finish.
                running.stop.set()
                await running.done.wait()
                self.pollers.pop(uid, None)
            if m is None:
                return
            if m["State"] == "Deleting":
                self.mappings.pop(uid, None)
                await trio.to_thread.run_sync(self.store.delete, uid, limiter=self._db)
                self._notify()
                return
            enabled = m.get("_enabled", True)
            if enabled:
                self._start_poller(m)
            m["State"] = "Enabled" if enabled else "Disabled"
            await self._save(m)
            self._notify()

    def _start_poller(self, m: Body) -> None:
        assert self._nursery is not None
        if self.queues is None or self.invoker is None:
            return
        stop, done = trio.Event(), trio.Event()
        p = _Poller(stop, done, PollerStats())
        self.pollers[m["UUID"]] = p
        if m["_kind"] != "sqs":
            self._start_stream_poller(m, p)
            return
        scaling = m.get("ScalingConfig") or {}
        cfg = SqsPollerConfig(
            uuid=m["UUID"], queue_arn=m["EventSourceArn"], batch_size=m["BatchSize"],
            window_seconds=float(m.get("MaximumBatchingWindowInSeconds") or 0),
            max_concurrency=int(scaling.get("MaximumConcurrency") or DEFAULT_SQS_CONCURRENCY),
            report_failures="ReportBatchItemFailures" in m.get("FunctionResponseTypes", []),
            patterns=filters.parse_criteria(m.get("FilterCriteria")),
            poll_interval=max(self.settings.poll_interval_ms, 1) / 1000,
        )
        invoke = self._invoker_for(m)

        async def run() -> None:
            try:
                await serve_sqs_mapping(cfg, self.queues, invoke, stop, p.stats, self._notify)
            except Exception:
                log.exception("event source mapping %s: poller failed", m["UUID"])
            finally:
                done.set()

        self._nursery.start_soon(run)

    def _invoker_for(self, m: Body) -> Any:
        ref = self.control.ref(Ctx(region=m["_region"], account=m["_account"]), m["_function"],
                               m.get("_qualifier"))

        async def invoke(payload: bytes) -> tuple[bool, bytes]:
            _st, fn, _alias = self.control.resolve(ref)
            res = await self.invoker.invoke(fn, payload)
            return res.function_error is None and res.status < 300, bytes(res.payload)

        return invoke

    def _start_stream_poller(self, m: Body, p: _Poller) -> None:
        assert self._nursery is not None
        uid = m["UUID"]
        ref = self.control.ref(Ctx(region=m["_region"], account=m["_account"]), m["_function"],
                               m.get("_qualifier"))
        try:
            role = self.control.resolve(ref)[1].role
        except LambdaError:
            role = ""
        source = MotoStreams(self.queues.services, m["_kind"], role)
        ts = m.get("StartingPositionTimestamp")
        cfg = StreamPollerConfig(
            uuid=uid, kind=m["_kind"], stream_arn=m["EventSourceArn"], function_arn=m["FunctionArn"],
            batch_size=m["BatchSize"], starting_position=m["StartingPosition"],
            starting_timestamp=float(ts) if isinstance(ts, int | float) else None,
            max_retries=m["MaximumRetryAttempts"], max_age=m["MaximumRecordAgeInSeconds"],
            bisect=bool(m["BisectBatchOnFunctionError"]),
            report_failures="ReportBatchItemFailures" in m.get("FunctionResponseTypes", []),
            patterns=filters.parse_criteria(m.get("FilterCriteria")),
            poll_interval=max(self.settings.poll_interval_ms, 1) / 1000,
            parallelization=int(m.get("ParallelizationFactor") or 1),
            tumbling_window=int(m.get("TumblingWindowInSeconds") or 0),
        )
        dest = (m.get("DestinationConfig") or {}).get("OnFailure", {}).get("Destination")

        async def save_checkpoint(shard: str, seq: str) -> None:
            if uid in self.mappings:
                await trio.to_thread.run_sync(self.store.set_checkpoint, uid, shard, seq, limiter=self._db)

        async def on_failure(record: Body) -> None:
            if dest and source_kind(dest) == "sqs":
                await self.queues.send(dest, json.dumps(record))
            else:
                log.warning("event source mapping %s: dropped a failed batch (no SQS OnFailure destination)", uid)

        async def run() -> None:
            try:
                checkpoints = await trio.to_thread.run_sync(self.store.checkpoints, uid, limiter=self._db)
                await serve_stream_mapping(cfg, source, self._invoker_for(m), checkpoints, save_checkpoint,
                                           on_failure, p.stop, p.stats, self._notify)
            except Exception:
                log.exception("event source mapping %s: stream poller failed", uid)
            finally:
                p.done.set()

        self._nursery.start_soon(run)

    def statistics(self, uid: str) -> PollerStats | None:
        p = self.pollers.get(uid)
        return p.stats if p is not None else None

    def _notify(self) -> None:
        self._activity.set()
        self._activity = trio.Event()

    async def wait_activity(self) -> None:
        """Wait for the next state change or poller cycle (a receive, a settled batch)."""
        await self._activity.wait()

    async def wait_settled(self, uid: str) -> None:
        """Wait until a mapping left its transitional state (or is gone)."""
        while (m := self.mappings.get(uid)) is not None and m["State"] not in ("Enabled", "Disabled"):
            await self.wait_activity()

    # ---- rendering -------------------------------------------------------------------------------

    @staticmethod
    def render(m: Body) -> Body:
        return {k: v for k, v in m.items() if not k.startswith("_")}

    def _get(self, uid: str) -> Body:
        m = self.mappings.get(uid)
        if m is None:
            raise ResourceNotFound(NOT_FOUND)
        return m

    # ---- validation ------------------------------------------------------------------------------

    def _function(self, ctx: Ctx, name: Any) -> tuple[str, str | None, str]:
        """(name, qualifier, FunctionArn) of an existing function, or AWS's 400."""
        if not isinstance(name, str) or not name:
            raise InvalidParameterValue("Function does not exist")
        ref = self.control.ref(ctx, name)
        try:
            self.control.resolve(ref)
        except ResourceNotFound as exc:
            raise InvalidParameterValue("Function does not exist") from exc
        return ref.name, ref.qualifier, ref.arn

    def _check_common(self, kind: str, m: Body, body: Body) -> None:
        """Validate (and apply to ``m``) the fields create and update share."""
        stream = kind != "sqs"
        bs = _int_field(body, "BatchSize", 1, 10000, "batchSize")
        if bs is not None:
            m["BatchSize"] = bs
        win = _int_field(body, "MaximumBatchingWindowInSeconds", 0, 300, "maximumBatchingWindowInSeconds")
        if win is not None:
            m["MaximumBatchingWindowInSeconds"] = win
        if kind == "sqs" and m["BatchSize"] > 10 and not m.get("MaximumBatchingWindowInSeconds"):
            raise InvalidParameterValue(
                "Maximum batch window in seconds must be greater than 0 if maximum batch size is greater than 10")
        if kind == "sqs" and m["EventSourceArn"].endswith(".fifo") and m["BatchSize"] > 10:
            raise InvalidParameterValue("Batch size must be between 1 and 10 inclusive")
        if "FilterCriteria" in body:
            crit = body["FilterCriteria"]
            filters.parse_criteria(crit)
            if crit and crit.get("Filters"):
                m["FilterCriteria"] = crit
            else:
                m.pop("FilterCriteria", None)
        if "FunctionResponseTypes" in body:
            types = body["FunctionResponseTypes"] or []
            for t in types:
                if t != "ReportBatchItemFailures":
                    raise ValidationError(
                        f"1 validation error detected: Value '[{t}]' at 'functionResponseTypes' failed to "
                        "satisfy constraint: Member must satisfy constraint: [Member must satisfy enum value "
                        "set: [ReportBatchItemFailures]]")
            m["FunctionResponseTypes"] = list(types)
        if "ScalingConfig" in body and body["ScalingConfig"] is not None:
            sc = body["ScalingConfig"]
            if stream:
                raise InvalidParameterValue("Unsupported ScalingConfig parameter for given event source mapping type.")
            mc = _int_field(sc if isinstance(sc, dict) else {}, "MaximumConcurrency", 2, 1000,
                            "scalingConfig.maximumConcurrency")
            if mc is None:
                m.pop("ScalingConfig", None)
            else:
                m["ScalingConfig"] = {"MaximumConcurrency": mc}
        if "DestinationConfig" in body and body["DestinationConfig"]:
            dc = body["DestinationConfig"]
            on_failure = (dc.get("OnFailure") or {}).get("Destination")
            if not stream or (dc.get("OnSuccess") or {}).get("Destination"):
                raise InvalidParameterValue(
                    "Unsupported DestinationConfig parameter for given event source mapping type.")
            m["DestinationConfig"] = {"OnFailure": {"Destination": on_failure} if on_failure else {}}
        for key in ("ParallelizationFactor", "TumblingWindowInSeconds"):
            if not stream and body.get(key) is not None:
                # AWS's wording for a stream-only field on SQS (serverless/serverless#7049 quotes it).
                raise InvalidParameterValue(f"Unsupported {key} parameter for given event source mapping type.")
        if stream:
            for key, lo, hi, wire in (
                ("MaximumRecordAgeInSeconds", -1, 604800, "maximumRecordAgeInSeconds"),
                ("MaximumRetryAttempts", -1, 10000, "maximumRetryAttempts"),
                ("ParallelizationFactor", 1, 10, "parallelizationFactor"),
                ("TumblingWindowInSeconds", 0, 900, "tumblingWindowInSeconds"),
            ):
                v = _int_field(body, key, lo, hi, wire)
                if v is not None:
                    m[key] = v
            if "BisectBatchOnFunctionError" in body:
                m["BisectBatchOnFunctionError"] = bool(body["BisectBatchOnFunctionError"])

    def _check_duplicate(self, m: Body) -> None:
        for other in self.mappings.values():
            if other["UUID"] == m["UUID"] or other["State"] == "Deleting":
                continue
            if other["EventSourceArn"] == m["EventSourceArn"] and other["FunctionArn"] == m["FunctionArn"]:
                if m["_kind"] == "sqs":
                    raise ResourceConflict(
                        f'An event source mapping with SQS arn (" {m["EventSourceArn"]} ") and function '
                        f'(" {m["_function"]} ") already exists. Please update or delete the existing mapping '
                        f'with UUID {other["UUID"]}')
                raise ResourceConflict(
                    f'The event source arn (" {m["EventSourceArn"]} ") and function (" {m["_function"]} ") '
                    f'provided mapping already exists. Please update or delete the existing mapping with '
                    f'UUID {other["UUID"]}')

    # ---- CRUD ------------------------------------------------------------------------------------

    async def create(self, ctx: Ctx, body: Any) -> Body:
        if not isinstance(body, dict):
            body = {}
        source = body.get("EventSourceArn")
        kind = source_kind(source)
        if kind is None:
            raise InvalidParameterValue("Unrecognized event source.")
        assert isinstance(source, str)
        name, qualifier, fn_arn = self._function(ctx, body.get("FunctionName"))
        uid = str(uuidlib.uuid4())
        m: Body = {
            "UUID": uid,
            "BatchSize": 10 if kind == "sqs" else 100,
            "MaximumBatchingWindowInSeconds": 0,
            "EventSourceArn": source,
            "FunctionArn": fn_arn,
            "LastModified": time.time(),
            "State": "Creating",
            "StateTransitionReason": "USER_INITIATED" if kind == "sqs" else "User action",
            "FunctionResponseTypes": [],
            "EventSourceMappingArn": f"arn:aws:lambda:{ctx.region}:{ctx.account}:event-source-mapping:{uid}",
            "_kind": kind, "_region": ctx.region, "_account": ctx.account, "_function": name,
            "_qualifier": qualifier, "_enabled": body.get("Enabled", True) is not False,
        }
        if kind != "sqs":
            pos = body.get("StartingPosition")
            if pos is None:
                raise InvalidParameterValue(
                    "1 validation error detected: Value null at 'startingPosition' failed to satisfy "
                    "constraint: Member must not be null.")
            if pos not in _POSITIONS:
                raise ValidationError(
                    f"1 validation error detected: Value '{pos}' at 'startingPosition' failed to satisfy "
                    "constraint: Member must satisfy enum value set: [LATEST, AT_TIMESTAMP, TRIM_HORIZON]")
            if pos == "AT_TIMESTAMP" and kind == "dynamodb":
                raise InvalidParameterValue(f"Unsupported starting position for arn type: {source}")
            m["StartingPosition"] = pos
            if pos == "AT_TIMESTAMP":
                ts = body.get("StartingPositionTimestamp")
                if ts is None:
                    raise InvalidParameterValue(
                        "StartingPositionTimestamp must be specified when StartingPosition is AT_TIMESTAMP")
                m["StartingPositionTimestamp"] = ts
            m.update({
                "ParallelizationFactor": 1, "DestinationConfig": {"OnFailure": {}},
                "MaximumRecordAgeInSeconds": -1, "BisectBatchOnFunctionError": False,
                "MaximumRetryAttempts": -1, "TumblingWindowInSeconds": 0,
                "LastProcessingResult": "No records processed",
            })
        self._check_common(kind, m, body)
        self._check_duplicate(m)
        if self.queues is not None:
            if kind == "sqs" and not await self.queues.exists(source):
                raise InvalidParameterValue(
                    "Error occurred while ReceiveMessage. SQS Error Code: AWS.SimpleQueueService.NonExistentQueue. "
                    "SQS Error Message: The specified queue does not exist.")
            if kind != "sqs" and not await self.queues.stream_exists(kind, source):
                raise InvalidParameterValue(f"Stream not found: {source}")
        self.mappings[uid] = m
        await self._save(m)
        out = self.render(m)
        self._kick(uid)
        return out

    def get(self, uid: str) -> Body:
        return self.render(self._get(uid))

    def list(self, ctx: Ctx, *, function_name: str | None, source_arn: str | None, marker: str | None,
             max_items: int | None) -> Body:
        fn_arn: str | None = None
        if function_name:
            ref = self.control.ref(ctx, function_name)
            fn_arn = ref.arn
        items = sorted(
            (m for m in self.mappings.values()
             if m["_region"] == ctx.region and m["_account"] == ctx.account
             and (fn_arn is None or m["FunctionArn"] == fn_arn)
             and (source_arn is None or m["EventSourceArn"] == source_arn)),
            key=lambda m: (m["LastModified"], m["UUID"]),
        )
        start = 0
        if marker:
            try:
                start = int(marker)
            except ValueError as exc:
                raise InvalidParameterValue("Invalid marker") from exc
        size = max_items or 100
        page = items[start:start + size]
        out: Body = {"EventSourceMappings": [self.render(m) for m in page]}
        if start + size < len(items):
            out["NextMarker"] = str(start + size)
        return out

    async def update(self, ctx: Ctx, uid: str, body: Any) -> Body:
        if not isinstance(body, dict):
            body = {}
        current = self._get(uid)
        if current["State"] not in ("Enabled", "Disabled"):
            # AWS: 400 ResourceInUseException while Creating/Enabling/Updating/Disabling/Deleting.
            raise ResourceInUse("Cannot update the event source mapping because it is in use.")
        unknown = set(body) - _UPDATABLE
        if unknown:
            raise InvalidParameterValue(f"Unsupported parameter(s) for update: {', '.join(sorted(unknown))}")
        m = dict(current)
        m["ScalingConfig"] = dict(current.get("ScalingConfig") or {}) or None
        if m["ScalingConfig"] is None:
            m.pop("ScalingConfig")
        if body.get("FunctionName") is not None:
            name, qualifier, fn_arn = self._function(ctx, body["FunctionName"])
            m.update({"_function": name, "_qualifier": qualifier, "FunctionArn": fn_arn})
            self._check_duplicate(m)
        self._check_common(m["_kind"], m, body)
        state = "Updating"
        if "Enabled" in body and body["Enabled"] is not None:
            enabled = bool(body["Enabled"])
            if enabled != m.get("_enabled", True):
                state = "Enabling" if enabled else "Disabling"
            m["_enabled"] = enabled
        m["State"] = state
        m["LastModified"] = time.time()
        self.mappings[uid] = m
        await self._save(m)
        out = self.render(m)
        self._kick(uid)
        return out

    async def delete(self, uid: str) -> Body:
        m = self._get(uid)
        if m["State"] in ("Updating", "Enabling", "Disabling"):
            # AWS's ResourceInUseException: "...or you tried to delete an event source mapping
            # currently UPDATING" (the Lambda API model's documentation of the error).
            raise ResourceInUse("Cannot delete the event source mapping because it is in use.")
        if m["State"] == "Deleting":
            raise ResourceConflict(
                "The operation cannot be performed at this time. The event source mapping is currently in "
                "the following state: Deleting")
        m["State"] = "Deleting"
        await self._save(m)
        out = self.render(m)
        if self._nursery is None:
            # No supervisor running: nothing to stop, forget it now.
            self.mappings.pop(uid, None)
            await trio.to_thread.run_sync(self.store.delete, uid, limiter=self._db)
        else:
            self._kick(uid)
        return out

