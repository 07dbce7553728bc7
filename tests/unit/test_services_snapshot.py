"""Which companion-service requests mark the snapshot changed (``dispatch.snapshot_part``), read
off the requests boto3 really sends, and when ``Services`` writes the periodic snapshot
(autojump clock, ``save`` replaced by a recorder: no moto, no disk)."""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
import trio.testing
from botocore.awsrequest import AWSPreparedRequest

from flocid.config import Settings
from flocid.services import persist
from flocid.services.app import Services
from flocid.services.dispatch import SNAPSHOT_PARTS, action_name, service_name, snapshot_part
from tests.conftest import client


class _Captured(Exception):
    def __init__(self, request: AWSPreparedRequest) -> None:
        self.request = request


def _capture(request: AWSPreparedRequest, **_: Any) -> None:
    raise _Captured(request)


def wire(service: str, op: str, **kwargs: Any) -> tuple[dict[str, Any], bytes]:
    """The ASGI scope and body of the request boto3 sends for ``op`` (captured, never sent)."""
    c = client("http://127.0.0.1:4566", "us-east-1", service)
    c.meta.events.register("before-send", _capture)
    with pytest.raises(_Captured) as info:
        getattr(c, op)(**kwargs)
    req = info.value.request
    url = urlsplit(req.url)
    body = req.body or b""
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, bytes):
        body = body.read()
    scope = {"type": "http", "method": req.method, "path": url.path, "query_string": url.query.encode(),
             "headers": [(k.lower().encode(), v if isinstance(v, bytes) else str(v).encode())
                         for k, v in req.headers.items()]}
    return scope, body


def part_of(scope: dict[str, Any], body: bytes) -> str | None:
    """What ``Services.__call__`` computes for a request."""
    return snapshot_part(service_name(scope, body), scope["method"], action_name(scope, body))


Q = "http://127.0.0.1:4566/000000000000/q"
T = {"TableName": "t"}
KEY = {"id": {"S": "a"}}


@pytest.mark.parametrize(("service", "op", "kwargs", "expected"), [
    ("s3", "create_bucket", {"Bucket": "b-1"}, "s3"),
    ("s3", "put_object", {"Bucket": "b-1", "Key": "k", "Body": b"x"}, "s3"),
    ("s3", "delete_object", {"Bucket": "b-1", "Key": "k"}, "s3"),
    ("s3", "put_object_tagging", {"Bucket": "b-1", "Key": "k", "Tagging": {"TagSet": []}}, "s3"),
    ("s3", "create_multipart_upload", {"Bucket": "b-1", "Key": "k"}, "s3"),
    ("s3", "get_object", {"Bucket": "b-1", "Key": "k"}, None),
    ("s3", "head_object", {"Bucket": "b-1", "Key": "k"}, None),
    ("s3", "list_objects_v2", {"Bucket": "b-1"}, None),
    ("s3", "list_buckets", {}, None),
    ("sqs", "create_queue", {"QueueName": "q"}, "sqs"),
    ("sqs", "send_message", {"QueueUrl": Q, "MessageBody": "m"}, "sqs"),
    ("sqs", "send_message_batch", {"QueueUrl": Q, "Entries": [{"Id": "1", "MessageBody": "m"}]}, "sqs"),
    ("sqs", "delete_message", {"QueueUrl": Q, "ReceiptHandle": "h"}, "sqs"),
    ("sqs", "change_message_visibility", {"QueueUrl": Q, "ReceiptHandle": "h", "VisibilityTimeout": 1}, "sqs"),
    ("sqs", "purge_queue", {"QueueUrl": Q}, "sqs"),
    ("sqs", "set_queue_attributes", {"QueueUrl": Q, "Attributes": {"DelaySeconds": "1"}}, "sqs"),
    ("sqs", "receive_message", {"QueueUrl": Q}, None),
    ("sqs", "get_queue_url", {"QueueName": "q"}, None),
    ("sqs", "get_queue_attributes", {"QueueUrl": Q}, None),
    ("sqs", "list_queues", {}, None),
    ("kinesis", "create_stream", {"StreamName": "s", "ShardCount": 1}, "kinesis"),
    ("kinesis", "put_record", {"StreamName": "s", "Data": b"x", "PartitionKey": "p"}, "kinesis"),
    ("kinesis", "put_records", {"StreamName": "s", "Records": [{"Data": b"x", "PartitionKey": "p"}]}, "kinesis"),
    ("kinesis", "add_tags_to_stream", {"StreamName": "s", "Tags": {"a": "b"}}, "kinesis"),
    ("kinesis", "describe_stream", {"StreamName": "s"}, None),
    ("kinesis", "get_shard_iterator", {"StreamName": "s", "ShardId": "shardId-000000000000",
                                       "ShardIteratorType": "TRIM_HORIZON"}, None),
    ("kinesis", "get_records", {"ShardIterator": "it"}, None),
    ("kinesis", "list_shards", {"StreamName": "s"}, None),
    ("dynamodb", "create_table", {**T, "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                                  "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                                  "BillingMode": "PAY_PER_REQUEST"}, "dynamodb"),
    ("dynamodb", "put_item", {**T, "Item": KEY}, "dynamodb"),
    ("dynamodb", "update_item", {**T, "Key": KEY}, "dynamodb"),
    ("dynamodb", "delete_item", {**T, "Key": KEY}, "dynamodb"),
    ("dynamodb", "batch_write_item", {"RequestItems": {"t": [{"PutRequest": {"Item": KEY}}]}}, "dynamodb"),
    ("dynamodb", "transact_write_items", {"TransactItems": [{"Put": {**T, "Item": KEY}}]}, "dynamodb"),
    # PartiQL may read or write: it counts as a write.
    ("dynamodb", "execute_statement", {"Statement": "SELECT * FROM t"}, "dynamodb"),
    ("dynamodb", "get_item", {**T, "Key": KEY}, None),
    ("dynamodb", "batch_get_item", {"RequestItems": {"t": {"Keys": [KEY]}}}, None),
    ("dynamodb", "transact_get_items", {"TransactItems": [{"Get": {**T, "Key": KEY}}]}, None),
    ("dynamodb", "query", {**T, "KeyConditionExpression": "id = :a",
                           "ExpressionAttributeValues": {":a": {"S": "a"}}}, None),
    ("dynamodb", "scan", T, None),
    ("dynamodb", "describe_table", T, None),
    ("dynamodbstreams", "get_records", {"ShardIterator": "it"}, None),
    ("dynamodbstreams", "describe_stream", {"StreamArn": "arn:aws:dynamodb:us-east-1:0:table/t/stream/x"}, None),
    # CloudWatch Logs are not in the snapshot: nothing to mark.
    ("logs", "create_log_group", {"logGroupName": "g"}, None),
    ("logs", "put_log_events", {"logGroupName": "g", "logStreamName": "s",
                                "logEvents": [{"timestamp": 1, "message": "m"}]}, None),
])
def test_boto3_requests_are_classified(service: str, op: str, kwargs: dict[str, Any], expected: str | None) -> None:
    scope, body = wire(service, op, **kwargs)
    assert part_of(scope, body) == expected


FORM = [(b"content-type", b"application/x-www-form-urlencoded; charset=utf-8")]


def test_sqs_query_protocol_reads_the_action_from_the_form_or_the_query() -> None:
    # The query protocol (older SDKs, the AWS CLI v1): unsigned here, so only the Action says SQS.
    send = {"method": "POST", "path": "/", "query_string": b"", "headers": FORM}
    assert part_of(send, b"Action=SendMessage&QueueUrl=x&MessageBody=m") == "sqs"
    assert part_of(send, b"QueueUrl=x&Action=DeleteMessage&ReceiptHandle=h") == "sqs"
    assert part_of(send, b"Action=ReceiveMessage&QueueUrl=x") is None
    assert part_of(send, b"Action=GetQueueAttributes&QueueUrl=x") is None
    get = {"method": "GET", "path": "/", "query_string": b"Action=ListQueues", "headers": []}
    assert part_of(get, b"") is None
    get["query_string"] = b"Action=CreateQueue&QueueName=q"
    assert part_of(get, b"") == "sqs"
    # An Action in a body that is not a form is not one.
    assert action_name({"method": "POST", "query_string": b"", "headers": []}, b"Action=X") is None


def test_an_action_it_cannot_name_counts_as_a_write() -> None:
    assert snapshot_part("dynamodb", "POST", None) == "dynamodb"
    assert snapshot_part("kinesis", "POST", "SomethingNew") == "kinesis"
    assert snapshot_part("s3", "POST", None) == "s3"  # DeleteObjects, presigned POST uploads
    assert snapshot_part("s3", "options", None) is None
    assert snapshot_part("sts", "POST", "AssumeRole") is None


def test_the_classifier_and_the_snapshot_agree_on_the_parts() -> None:
    assert set(persist.PARTS) == SNAPSHOT_PARTS


# ---- when the periodic snapshot is written ---------------------------------------------------------


class RecordingServices(Services):
    """``save`` records (time, parts) instead of pickling moto; ``gate`` can hold a save open,
    ``fail`` makes the next saves fail for those parts."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.saves: list[tuple[float, frozenset[str] | None]] = []
        self.began = trio.Event()
        self.ended = trio.Event()
        self.gate: trio.Event | None = None
        self.fail: list[frozenset[str]] = []
        self.duration = 0.0

    async def save(self, parts: frozenset[str] | None = None) -> dict[str, int]:
        self.saves.append((trio.current_time(), parts))
        self.began.set()
        self.began = trio.Event()
        if self.gate is not None:
            await self.gate.wait()
        await trio.sleep(self.duration)
        self.ended.set()
        self.ended = trio.Event()
        if self.fail:
            raise persist.SnapshotIncomplete(self.fail.pop(0), {})
        return {}


def recording(interval_ms: int = 1000) -> RecordingServices:
    return RecordingServices(Settings(services_snapshot_interval_ms=interval_ms))


async def test_nothing_changed_nothing_written(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    svc = recording()
    nursery.start_soon(svc._serve_snapshots)
    await trio.sleep(3600)
    assert svc.saves == []


async def test_changes_within_an_interval_make_one_snapshot_of_the_changed_parts(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    svc = recording(1000)
    nursery.start_soon(svc._serve_snapshots)
    await trio.sleep(5)
    t0 = trio.current_time()
    svc.mark_changed("s3")
    await trio.sleep(0.3)
    svc.mark_changed("sqs")
    svc.mark_changed("s3")
    with trio.fail_after(2):
        await svc.wait_snapshot_written()
    assert svc.saves == [(pytest.approx(t0 + 1.0), frozenset({"s3", "sqs"}))]
    assert svc.snapshots == 1
    # Quiet again: no more snapshots.
    await trio.sleep(60)
    assert len(svc.saves) == 1
    # The next change starts a new interval and names only itself.
    t1 = trio.current_time()
    svc.mark_changed("kinesis")
    with trio.fail_after(2):
        await svc.wait_snapshot_written()
    assert svc.saves[1] == (pytest.approx(t1 + 1.0), frozenset({"kinesis"}))
    # Nothing new marked: there is nothing to wait for.
    with trio.fail_after(0.001):
        await svc.wait_snapshot_written()


async def test_a_change_during_a_snapshot_goes_into_the_next(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    svc = recording(500)
    gate = svc.gate = trio.Event()
    nursery.start_soon(svc._serve_snapshots)
    svc.mark_changed("dynamodb")
    with trio.fail_after(1):
        await svc.began.wait()
    # The snapshot is being written (the moto thread pickles): a change now...
    await trio.sleep(0.05)
    svc.mark_changed("s3")
    waiter_done = trio.Event()

    async def waiter() -> None:
        await svc.wait_snapshot_written()
        waiter_done.set()

    nursery.start_soon(waiter)
    svc.gate = None
    gate_opened = trio.current_time()
    gate.set()
    with trio.fail_after(1):
        await svc.ended.wait()
    # ...is not in the snapshot that was running, so waiting for it goes on past that one,
    assert svc.snapshots == 1 and not waiter_done.is_set()
    with trio.fail_after(5):
        await waiter_done.wait()
    # ...and is written one interval after that snapshot ended, not lost.
    assert svc.saves[0][1] == frozenset({"dynamodb"})
    assert svc.saves[1] == (pytest.approx(gate_opened + 0.5), frozenset({"s3"}))


async def test_a_burst_of_changes_is_written_at_most_once_per_interval(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    svc = recording(1000)
    nursery.start_soon(svc._serve_snapshots)
    start = trio.current_time()
    while trio.current_time() - start < 10:  # noqa: ASYNC110 - a client writing every 50 ms
        svc.mark_changed("sqs")
        await trio.sleep(0.05)
    times = [t for t, _ in svc.saves]
    assert 8 <= len(times) <= 10
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(times))


async def test_slow_snapshots_come_less_often(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """A snapshot that holds the moto thread 2 s (a huge bucket) is followed by 10 s without one,
    so snapshots take at most a fifth of the thread; quick ones are back to the interval."""
    svc = recording(1000)
    svc.duration = 2.0
    nursery.start_soon(svc._serve_snapshots)
    start = trio.current_time()
    while trio.current_time() - start < 30:  # noqa: ASYNC110 - a client writing every 100 ms
        svc.mark_changed("s3")
        await trio.sleep(0.1)
    times = [t - start for t, _ in svc.saves]
    assert times == [pytest.approx(1.0), pytest.approx(13.0), pytest.approx(25.0)]
    svc.duration = 0.1
    while trio.current_time() - start < 40:  # noqa: ASYNC110
        svc.mark_changed("s3")
        await trio.sleep(0.1)
    gaps = [b - a for a, b in itertools.pairwise(t for t, _ in svc.saves[3:])]
    assert gaps and all(g == pytest.approx(1.1, abs=0.11) for g in gaps)


async def test_a_failed_part_is_retried_with_a_growing_wait(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    svc = recording(1000)
    svc.fail = [frozenset({"s3"}), frozenset({"s3"})]
    nursery.start_soon(svc._serve_snapshots)
    t0 = trio.current_time()
    svc.mark_changed("s3")
    svc.mark_changed("sqs")
    with trio.fail_after(10):
        await svc.wait_snapshot_written()
    # sqs was written the first time; s3 failed twice and was tried again with no new change,
    # 2 s then 4 s later; the wait is back to one interval after a success.
    assert svc.saves == [(pytest.approx(t0 + 1), frozenset({"s3", "sqs"})),
                         (pytest.approx(t0 + 3), frozenset({"s3"})),
                         (pytest.approx(t0 + 7), frozenset({"s3"}))]
    t1 = trio.current_time()
    svc.mark_changed("kinesis")
    with trio.fail_after(2):
        await svc.wait_snapshot_written()
    assert svc.saves[-1] == (pytest.approx(t1 + 1), frozenset({"kinesis"}))


async def test_interval_zero_writes_only_on_a_clean_stop(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    svc = recording(0)
    nursery.start_soon(svc._serve_snapshots)
    svc.mark_changed("s3")
    await trio.sleep(3600)
    assert svc.saves == []


def test_the_interval_is_a_floci_setting() -> None:
    assert Settings().services_snapshot_interval_ms == 1000
    assert Settings.from_env({"FLOCI_SERVICES_SNAPSHOT_INTERVAL_MS": "250"}).services_snapshot_interval_ms == 250
    assert Settings.from_env({"FLOCI_SERVICES_SNAPSHOT_INTERVAL_MS": "0"}).services_snapshot_interval_ms == 0
    with pytest.raises(ValueError, match="FLOCI_SERVICES_SNAPSHOT_INTERVAL_MS"):
        Settings.from_env({"FLOCI_SERVICES_SNAPSHOT_INTERVAL_MS": "soon"})
    with pytest.raises(ValueError, match="services_snapshot_interval_ms"):
        Settings(services_snapshot_interval_ms=-1)
