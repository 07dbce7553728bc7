"""The companion services (S3, SQS, Kinesis, DynamoDB + Streams, CloudWatch Logs) through flocid's
port with boto3, next to the Lambda API on the same port.

The fixture builds what ``run_daemon`` builds, with the services app in the gateway (until the
lead wires it into ``flocid/daemon.py``). moto's backends are process-global, so each test starts
from reset backends; a restart test resets them between the two daemons, as a new process would.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import botocore.config
import pytest
import trio
from botocore.exceptions import ClientError

from flocid.api.app import create_app
from flocid.config import Settings
from flocid.control import ControlPlane
from flocid.daemon import open_api_sockets, serve_api
from flocid.gateway import Gateway
from flocid.services import S3ObjectChanged, S3ObjectError, Services, create_services_app
from flocid.state.codestore import CodeStore
from flocid.state.store import Store
from tests.conftest import PY_HANDLER, ROLE, client, settings_for


def reset_moto() -> None:
    from moto.core.base_backend import BackendDict

    BackendDict.reset()


@attrs.define
class Stack:
    url: str
    services: Services
    scope: trio.CancelScope
    done: trio.Event

    def client(self, service: str, region: str = "us-east-1") -> Any:
        return client(self.url, region, service)

    async def call(self, c: Any, op: str, **kwargs: Any) -> Any:
        def run() -> Any:
            out = getattr(c, op)(**kwargs)
            if isinstance(out, dict) and hasattr(out.get("Body"), "read"):
                out["Body"] = out["Body"].read()
            return out

        return await trio.to_thread.run_sync(run)

    async def stop(self) -> None:
        self.scope.cancel()
        with trio.fail_after(30):
            await self.done.wait()


def _client_with(url: str, region: str, service: str, config: dict[str, Any]) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=url, region_name=region, aws_access_key_id="test",
                        aws_secret_access_key="test",
                        config=botocore.config.Config(retries={"max_attempts": 1}, **config))


async def run_stack(settings: Settings, *, task_status: trio.TaskStatus[Stack]) -> None:
    """A daemon with the services app wired in (executor none): what daemon.py will do."""
    sockets, port = open_api_sockets(settings)
    settings = attrs.evolve(settings, port=port)
    store = await trio.to_thread.run_sync(Store, settings.data_dir / "state.db")
    code = await trio.to_thread.run_sync(CodeStore, settings.code_dir)
    control = ControlPlane(settings, store, code)
    services = create_services_app(settings)
    done = trio.Event()
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as root:
                await root.start(services.serve)
                app = Gateway(create_app(control), services_app=services)
                binds = await root.start(serve_api, app, sockets)
                task_status.started(Stack(binds[0], services, scope, done))
    finally:
        store.close()
        done.set()


@pytest.fixture
async def stack(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Stack]:
    reset_moto()
    s: Stack = await nursery.start(run_stack, settings_for(tmp_path))
    yield s
    await s.stop()


# ---- S3 -------------------------------------------------------------------------------------------


async def test_s3_path_style_round_trip(stack: Stack) -> None:
    s3 = stack.client("s3")
    await stack.call(s3, "create_bucket", Bucket="path-bucket")
    await stack.call(s3, "put_object", Bucket="path-bucket", Key="dir/a b.txt", Body=b"hello",
                     ContentType="text/plain", Metadata={"k": "v"})
    big = bytes(range(256)) * 8192  # 2 MiB: more than one response chunk
    await stack.call(s3, "put_object", Bucket="path-bucket", Key="big.bin", Body=big)
    got = await stack.call(s3, "get_object", Bucket="path-bucket", Key="dir/a b.txt")
    assert got["Body"] == b"hello"
    assert got["ContentType"] == "text/plain"
    assert got["Metadata"] == {"k": "v"}
    assert (await stack.call(s3, "get_object", Bucket="path-bucket", Key="big.bin"))["Body"] == big
    head = await stack.call(s3, "head_object", Bucket="path-bucket", Key="big.bin")
    assert head["ContentLength"] == len(big)
    listed = await stack.call(s3, "list_objects_v2", Bucket="path-bucket")
    assert sorted(o["Key"] for o in listed["Contents"]) == ["big.bin", "dir/a b.txt"]
    await stack.call(s3, "delete_object", Bucket="path-bucket", Key="big.bin")
    listed = await stack.call(s3, "list_objects_v2", Bucket="path-bucket")
    assert [o["Key"] for o in listed["Contents"]] == ["dir/a b.txt"]
    with pytest.raises(ClientError) as info:
        await stack.call(s3, "get_object", Bucket="path-bucket", Key="big.bin")
    assert info.value.response["Error"]["Code"] == "NoSuchKey"
    buckets = await stack.call(s3, "list_buckets")
    assert [b["Name"] for b in buckets["Buckets"]] == ["path-bucket"]


@pytest.mark.parametrize("base", ["localhost", "localhost.floci.io"])
async def test_s3_virtual_hosted_style(stack: Stack, base: str) -> None:
    """``my-bucket.localhost:<port>`` and ``my-bucket.localhost.floci.io:<port>``: the bucket is in
    the Host header. The client connects to 127.0.0.1 whatever the name (no DNS in tests)."""
    port = stack.url.rsplit(":", 1)[1]
    virt = _client_with(f"http://{base}:{port}", "us-east-1", "s3",
                        {"s3": {"addressing_style": "virtual"}})
    # Resolve every name to loopback without touching DNS: rewrite the URL the client connects to.
    def to_loopback(request: Any, **_: Any) -> None:
        assert f"//vhost-bucket.{base}:" in request.url, request.url  # really virtual-hosted
        request.url = request.url.replace(f"//vhost-bucket.{base}:", "//127.0.0.1:", 1)
        request.headers["Host"] = f"vhost-bucket.{base}:{port}"

    virt.meta.events.register_first("before-send.s3", to_loopback)
    await stack.call(virt, "create_bucket", Bucket="vhost-bucket")
    await stack.call(virt, "put_object", Bucket="vhost-bucket", Key="k1", Body=b"virtual")
    assert (await stack.call(virt, "get_object", Bucket="vhost-bucket", Key="k1"))["Body"] == b"virtual"
    listed = await stack.call(virt, "list_objects_v2", Bucket="vhost-bucket")
    assert [o["Key"] for o in listed["Contents"]] == ["k1"]
    # The same object, path style.
    s3 = stack.client("s3")
    assert (await stack.call(s3, "get_object", Bucket="vhost-bucket", Key="k1"))["Body"] == b"virtual"
    await stack.call(virt, "delete_object", Bucket="vhost-bucket", Key="k1")
    assert "Contents" not in await stack.call(s3, "list_objects_v2", Bucket="vhost-bucket")


async def test_s3_object_changed_events_and_get_object(stack: Stack) -> None:
    seen: list[S3ObjectChanged] = []
    stack.services.on_s3_object_changed.append(seen.append)
    s3 = stack.client("s3", "eu-west-1")
    await stack.call(s3, "create_bucket", Bucket="code-bucket",
                     CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    await stack.call(s3, "put_bucket_versioning", Bucket="code-bucket",
                     VersioningConfiguration={"Status": "Enabled"})
    assert seen == []  # bucket-level writes are not object changes
    v1 = (await stack.call(s3, "put_object", Bucket="code-bucket", Key="fn.zip", Body=b"one"))["VersionId"]
    await stack.call(s3, "put_object_tagging", Bucket="code-bucket", Key="fn.zip",
                     Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})
    copied = await stack.call(s3, "copy_object", Bucket="code-bucket", Key="copy.zip",
                              CopySource={"Bucket": "code-bucket", "Key": "fn.zip"})
    upload = await stack.call(s3, "create_multipart_upload", Bucket="code-bucket", Key="fn.zip")
    part = await stack.call(s3, "upload_part", Bucket="code-bucket", Key="fn.zip", PartNumber=1,
                            UploadId=upload["UploadId"], Body=b"two" * 2_000_000)
    done = await stack.call(s3, "complete_multipart_upload", Bucket="code-bucket", Key="fn.zip",
                            UploadId=upload["UploadId"],
                            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert seen == [
        S3ObjectChanged("eu-west-1", "code-bucket", "fn.zip", v1),
        S3ObjectChanged("eu-west-1", "code-bucket", "copy.zip", copied["VersionId"]),
        S3ObjectChanged("eu-west-1", "code-bucket", "fn.zip", done["VersionId"]),
    ]
    assert await stack.services.get_s3_object("code-bucket", "fn.zip") == b"two" * 2_000_000
    assert await stack.services.get_s3_object("code-bucket", "fn.zip", v1) == b"one"
    with pytest.raises(S3ObjectError) as info:
        await stack.services.get_s3_object("code-bucket", "missing.zip")
    assert info.value.code == "NoSuchKey"
    with pytest.raises(S3ObjectError) as info:
        await stack.services.get_s3_object("no-such-bucket", "fn.zip")
    assert info.value.code == "NoSuchBucket"


# ---- SQS, Kinesis, DynamoDB, Logs -------------------------------------------------------------------


async def test_sqs_round_trip(stack: Stack) -> None:
    sqs = stack.client("sqs", "us-west-2")
    url = (await stack.call(sqs, "create_queue", QueueName="jobs"))["QueueUrl"]
    assert url == f"{stack.url}/000000000000/jobs"
    assert (await stack.call(sqs, "get_queue_url", QueueName="jobs"))["QueueUrl"] == url
    await stack.call(sqs, "send_message", QueueUrl=url, MessageBody="m1",
                     MessageAttributes={"kind": {"DataType": "String", "StringValue": "x"}})
    got = await stack.call(sqs, "receive_message", QueueUrl=url, MaxNumberOfMessages=10,
                           MessageAttributeNames=["All"])
    assert [m["Body"] for m in got["Messages"]] == ["m1"]
    assert got["Messages"][0]["MessageAttributes"]["kind"]["StringValue"] == "x"
    await stack.call(sqs, "delete_message", QueueUrl=url, ReceiptHandle=got["Messages"][0]["ReceiptHandle"])
    attrs_ = await stack.call(sqs, "get_queue_attributes", QueueUrl=url, AttributeNames=["All"])
    assert attrs_["Attributes"]["ApproximateNumberOfMessages"] == "0"
    assert attrs_["Attributes"]["QueueArn"] == "arn:aws:sqs:us-west-2:000000000000:jobs"
    # Region-scoped: the queue does not exist in us-east-1.
    with pytest.raises(ClientError):
        await stack.call(stack.client("sqs"), "get_queue_url", QueueName="jobs")


async def test_sqs_queue_url_uses_configured_hostname(tmp_path: Path, nursery: trio.Nursery) -> None:
    reset_moto()
    s: Stack = await nursery.start(run_stack, settings_for(tmp_path, hostname="floci.internal"))
    try:
        port = s.url.rsplit(":", 1)[1]
        url = (await s.call(s.client("sqs"), "create_queue", QueueName="q1"))["QueueUrl"]
        assert url == f"http://floci.internal:{port}/000000000000/q1"
    finally:
        await s.stop()


async def test_kinesis_round_trip(stack: Stack) -> None:
    kinesis = stack.client("kinesis")
    await stack.call(kinesis, "create_stream", StreamName="events", ShardCount=1)
    desc = await stack.call(kinesis, "describe_stream", StreamName="events")
    assert desc["StreamDescription"]["StreamARN"] == "arn:aws:kinesis:us-east-1:000000000000:stream/events"
    shard = desc["StreamDescription"]["Shards"][0]["ShardId"]
    await stack.call(kinesis, "put_record", StreamName="events", Data=b"rec-1", PartitionKey="p")
    it = (await stack.call(kinesis, "get_shard_iterator", StreamName="events", ShardId=shard,
                           ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    records = (await stack.call(kinesis, "get_records", ShardIterator=it))["Records"]
    assert [r["Data"] for r in records] == [b"rec-1"]


async def test_dynamodb_round_trip_with_stream(stack: Stack) -> None:
    ddb = stack.client("dynamodb")
    table = await stack.call(
        ddb, "create_table", TableName="items",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    stream_arn = table["TableDescription"]["LatestStreamArn"]
    assert stream_arn.startswith("arn:aws:dynamodb:us-east-1:000000000000:table/items/stream/")
    await stack.call(ddb, "put_item", TableName="items", Item={"pk": {"S": "a"}, "sk": {"S": "1"}, "v": {"N": "7"}})
    await stack.call(ddb, "put_item", TableName="items", Item={"pk": {"S": "a"}, "sk": {"S": "2"}})
    got = await stack.call(ddb, "get_item", TableName="items", Key={"pk": {"S": "a"}, "sk": {"S": "1"}})
    assert got["Item"]["v"] == {"N": "7"}
    q = await stack.call(ddb, "query", TableName="items", KeyConditionExpression="pk = :p",
                         ExpressionAttributeValues={":p": {"S": "a"}})
    assert [i["sk"]["S"] for i in q["Items"]] == ["1", "2"]
    streams = stack.client("dynamodbstreams")
    desc = await stack.call(streams, "describe_stream", StreamArn=stream_arn)
    shard = desc["StreamDescription"]["Shards"][0]["ShardId"]
    it = (await stack.call(streams, "get_shard_iterator", StreamArn=stream_arn, ShardId=shard,
                           ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    records = (await stack.call(streams, "get_records", ShardIterator=it))["Records"]
    assert [r["eventName"] for r in records] == ["INSERT", "INSERT"]
    assert records[0]["dynamodb"]["NewImage"]["v"] == {"N": "7"}


async def test_logs_round_trip(stack: Stack) -> None:
    logs = stack.client("logs")
    now = int(time.time() * 1000)  # AWS (and moto) drop events older than 14 days
    await stack.call(logs, "create_log_group", logGroupName="/aws/lambda/f")
    await stack.call(logs, "create_log_stream", logGroupName="/aws/lambda/f", logStreamName="s1")
    await stack.call(logs, "put_log_events", logGroupName="/aws/lambda/f", logStreamName="s1",
                     logEvents=[{"timestamp": now, "message": "hello"},
                                {"timestamp": now + 1, "message": "world"}])
    got = await stack.call(logs, "get_log_events", logGroupName="/aws/lambda/f", logStreamName="s1",
                           startFromHead=True)
    assert [e["message"] for e in got["events"]] == ["hello", "world"]
    groups = await stack.call(logs, "describe_log_groups")
    assert groups["logGroups"][0]["arn"].startswith("arn:aws:logs:us-east-1:000000000000:log-group:/aws/lambda/f")


async def test_lambda_api_still_answers_beside_services(stack: Stack) -> None:
    lam = stack.client("lambda")
    out = await stack.call(lam, "create_function", FunctionName="beside", Runtime="python3.13", Role=ROLE,
                           Handler="index.handler", Code={"ZipFile": PY_HANDLER})
    assert out["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:beside"
    names = [f["FunctionName"] for f in (await stack.call(lam, "list_functions"))["Functions"]]
    assert names == ["beside"]
    with pytest.raises(ClientError) as info:
        await stack.call(lam, "get_function", FunctionName="nope")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


# ---- persistence ----------------------------------------------------------------------------------


async def test_s3_and_sqs_survive_a_clean_restart(tmp_path: Path, nursery: trio.Nursery) -> None:
    settings = settings_for(tmp_path)
    reset_moto()
    first: Stack = await nursery.start(run_stack, settings)
    s3, sqs = first.client("s3"), first.client("sqs", "eu-central-1")
    await first.call(s3, "create_bucket", Bucket="keep-bucket")
    await first.call(s3, "put_object", Bucket="keep-bucket", Key="a/b.txt", Body=b"kept",
                     Metadata={"m": "1"})
    await first.call(s3, "create_bucket", Bucket="keep-versioned")
    await first.call(s3, "put_bucket_versioning", Bucket="keep-versioned",
                     VersioningConfiguration={"Status": "Enabled"})
    old = (await first.call(s3, "put_object", Bucket="keep-versioned", Key="k", Body=b"v1"))["VersionId"]
    await first.call(s3, "put_object", Bucket="keep-versioned", Key="k", Body=b"v2")
    url = (await first.call(sqs, "create_queue", QueueName="keep.fifo",
                            Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true",
                                        "VisibilityTimeout": "45"}))["QueueUrl"]
    for body in ("one", "two", "three"):
        await first.call(sqs, "send_message", QueueUrl=url, MessageBody=body, MessageGroupId="g")
    dlq = (await first.call(sqs, "create_queue", QueueName="keep-dlq"))["QueueUrl"]
    dlq_arn = (await first.call(sqs, "get_queue_attributes", QueueUrl=dlq,
                                AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})
    await first.call(sqs, "create_queue", QueueName="keep-work", Attributes={"RedrivePolicy": redrive})
    got = await first.call(sqs, "receive_message", QueueUrl=url, MaxNumberOfMessages=1)
    await first.call(sqs, "delete_message", QueueUrl=url, ReceiptHandle=got["Messages"][0]["ReceiptHandle"])
    await first.stop()
    assert (tmp_path / "data" / "services" / "s3.pickle").is_file()

    reset_moto()  # a new process starts with empty moto backends
    second: Stack = await nursery.start(run_stack, settings)
    try:
        s3, sqs = second.client("s3"), second.client("sqs", "eu-central-1")
        got = await second.call(s3, "get_object", Bucket="keep-bucket", Key="a/b.txt")
        assert got["Body"] == b"kept"
        assert got["Metadata"] == {"m": "1"}
        assert (await second.call(s3, "get_object", Bucket="keep-versioned", Key="k"))["Body"] == b"v2"
        assert await second.services.get_s3_object("keep-versioned", "k", old) == b"v1"
        url2 = (await second.call(sqs, "get_queue_url", QueueName="keep.fifo"))["QueueUrl"]
        assert url2.endswith("/000000000000/keep.fifo")
        attributes = (await second.call(sqs, "get_queue_attributes", QueueUrl=url2,
                                        AttributeNames=["All"]))["Attributes"]
        assert attributes["VisibilityTimeout"] == "45"
        assert attributes["FifoQueue"] == "true"
        got = await second.call(sqs, "receive_message", QueueUrl=url2, MaxNumberOfMessages=10)
        assert [m["Body"] for m in got["Messages"]] == ["two", "three"]
        work = (await second.call(sqs, "get_queue_url", QueueName="keep-work"))["QueueUrl"]
        restored = (await second.call(sqs, "get_queue_attributes", QueueUrl=work,
                                      AttributeNames=["RedrivePolicy"]))["Attributes"]
        assert json.loads(restored["RedrivePolicy"]) == json.loads(redrive)
        # And the restored bucket takes new writes.
        await second.call(s3, "put_object", Bucket="keep-bucket", Key="new", Body=b"n")
        assert await second.services.get_s3_object("keep-bucket", "new") == b"n"
    finally:
        await second.stop()


async def test_unreadable_snapshot_is_set_aside(tmp_path: Path, nursery: trio.Nursery) -> None:
    settings = settings_for(tmp_path)
    snap = tmp_path / "data" / "services"
    snap.mkdir(parents=True)
    (snap / "s3.pickle").write_bytes(b"not a pickle")
    reset_moto()
    s: Stack = await nursery.start(run_stack, settings)
    try:
        assert (snap / "s3.pickle.unreadable").read_bytes() == b"not a pickle"
        buckets = await s.call(s.client("s3"), "list_buckets")
        assert buckets["Buckets"] == []
    finally:
        await s.stop()


async def _kinesis_view(stack: Stack, kinesis: Any, name: str) -> dict[str, Any]:
    """Every shard's records (sequence numbers included) read from TRIM_HORIZON, and the stream's
    shape: what a reader of the stream sees."""
    desc = (await stack.call(kinesis, "describe_stream", StreamName=name))["StreamDescription"]
    records: dict[str, list[tuple[str, bytes, str]]] = {}
    for shard in desc["Shards"]:
        it = (await stack.call(kinesis, "get_shard_iterator", StreamName=name, ShardId=shard["ShardId"],
                               ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
        got = (await stack.call(kinesis, "get_records", ShardIterator=it, Limit=1000))["Records"]
        records[shard["ShardId"]] = [(r["SequenceNumber"], r["Data"], r["PartitionKey"]) for r in got]
    tags = (await stack.call(kinesis, "list_tags_for_stream", StreamName=name))["Tags"]
    consumers = (await stack.call(kinesis, "list_stream_consumers", StreamARN=desc["StreamARN"]))["Consumers"]
    return {"arn": desc["StreamARN"], "shards": [s["ShardId"] for s in desc["Shards"]],
            "retention": desc["RetentionPeriodHours"], "records": records, "tags": tags,
            "consumers": [(c["ConsumerName"], c["ConsumerARN"]) for c in consumers]}


async def _dynamodb_view(stack: Stack, ddb: Any, streams: Any, name: str) -> dict[str, Any]:
    table = (await stack.call(ddb, "describe_table", TableName=name))["Table"]
    items = (await stack.call(ddb, "scan", TableName=name))["Items"]
    stream_arn = table["LatestStreamArn"]
    shards = (await stack.call(streams, "describe_stream", StreamArn=stream_arn))["StreamDescription"]["Shards"]
    it = (await stack.call(streams, "get_shard_iterator", StreamArn=stream_arn, ShardId=shards[0]["ShardId"],
                           ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    records = (await stack.call(streams, "get_records", ShardIterator=it))["Records"]
    tags = (await stack.call(ddb, "list_tags_of_resource", ResourceArn=table["TableArn"]))["Tags"]
    return {
        "table": {k: table[k] for k in ("TableArn", "KeySchema", "AttributeDefinitions", "ItemCount",
                                        "StreamSpecification", "LatestStreamArn", "LatestStreamLabel",
                                        "BillingModeSummary", "GlobalSecondaryIndexes", "LocalSecondaryIndexes")},
        "items": sorted(items, key=lambda i: (i["pk"]["S"], i["sk"]["N"])),
        "shards": [s["ShardId"] for s in shards],
        "records": [(r["eventID"], r["eventName"], r["dynamodb"]["SequenceNumber"], r["dynamodb"]["Keys"],
                     r["dynamodb"].get("NewImage"), r["dynamodb"].get("OldImage")) for r in records],
        "tags": tags,
    }


async def test_kinesis_and_dynamodb_survive_a_clean_restart(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Streams, shards, records and their sequence numbers; tables, items, indexes, the stream and its
    records with their sequence numbers: identical after a clean restart into empty moto backends."""
    settings = settings_for(tmp_path)
    reset_moto()
    first: Stack = await nursery.start(run_stack, settings)
    kinesis, ddb, streams = first.client("kinesis"), first.client("dynamodb"), first.client("dynamodbstreams")
    await first.call(kinesis, "create_stream", StreamName="keep-stream", ShardCount=3)
    for i in range(12):
        await first.call(kinesis, "put_record", StreamName="keep-stream", Data=f"r{i}".encode(),
                         PartitionKey=f"pk{i % 4}")
    await first.call(kinesis, "add_tags_to_stream", StreamName="keep-stream", Tags={"team": "a"})
    arn = (await first.call(kinesis, "describe_stream", StreamName="keep-stream"))["StreamDescription"]["StreamARN"]
    await first.call(kinesis, "register_stream_consumer", StreamARN=arn, ConsumerName="reader")
    await first.call(
        ddb, "create_table", TableName="keep-table", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "N"},
                              {"AttributeName": "g", "AttributeType": "S"}],
        GlobalSecondaryIndexes=[{"IndexName": "by-g", "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                                 "Projection": {"ProjectionType": "ALL"}}],
        LocalSecondaryIndexes=[{"IndexName": "by-pk-g", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"},
                                                                      {"AttributeName": "g", "KeyType": "RANGE"}],
                                "Projection": {"ProjectionType": "KEYS_ONLY"}}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        Tags=[{"Key": "team", "Value": "b"}])
    for i in range(6):
        await first.call(ddb, "put_item", TableName="keep-table",
                         Item={"pk": {"S": f"p{i % 2}"}, "sk": {"N": str(i)}, "g": {"S": f"g{i % 3}"},
                               "blob": {"B": bytes([i])}, "set": {"SS": ["a", str(i)]}})
    await first.call(ddb, "update_item", TableName="keep-table", Key={"pk": {"S": "p0"}, "sk": {"N": "0"}},
                     UpdateExpression="SET g = :g", ExpressionAttributeValues={":g": {"S": "changed"}})
    await first.call(ddb, "delete_item", TableName="keep-table", Key={"pk": {"S": "p1"}, "sk": {"N": "1"}})
    before_kinesis = await _kinesis_view(first, kinesis, "keep-stream")
    before_ddb = await _dynamodb_view(first, ddb, streams, "keep-table")
    assert sum(len(r) for r in before_kinesis["records"].values()) == 12
    assert len(before_ddb["records"]) == 8 and len(before_ddb["items"]) == 5
    first_shard = next(shard for shard, recs in before_kinesis["records"].items() if recs)
    old_iterator = (await first.call(kinesis, "get_shard_iterator", StreamName="keep-stream", ShardId=first_shard,
                                     ShardIteratorType="TRIM_HORIZON"))["ShardIterator"]
    await first.stop()
    snap = tmp_path / "data" / "services"
    assert (snap / "kinesis.pickle").is_file() and (snap / "dynamodb.pickle").is_file()

    reset_moto()  # a new process starts with empty moto backends
    second: Stack = await nursery.start(run_stack, settings)
    try:
        kinesis, ddb, streams = second.client("kinesis"), second.client("dynamodb"), second.client("dynamodbstreams")
        assert await _kinesis_view(second, kinesis, "keep-stream") == before_kinesis
        assert await _dynamodb_view(second, ddb, streams, "keep-table") == before_ddb
        # A Kinesis iterator taken before the restart still reads (it encodes its position).
        got = (await second.call(kinesis, "get_records", ShardIterator=old_iterator))["Records"]
        assert [r["SequenceNumber"] for r in got] == [seq for seq, _d, _pk in before_kinesis["records"][first_shard]]
        # The restored index answers queries, and the restored stream and table take new writes that
        # continue their sequences.
        by_g = await second.call(ddb, "query", TableName="keep-table", IndexName="by-g",
                                 KeyConditionExpression="g = :g", ExpressionAttributeValues={":g": {"S": "changed"}})
        assert [i["sk"]["N"] for i in by_g["Items"]] == ["0"]
        put = await second.call(kinesis, "put_record", StreamName="keep-stream", Data=b"new", PartitionKey="pk0")
        old_seqs = [seq for seq, _d, pk in before_kinesis["records"][put["ShardId"]]]
        assert int(put["SequenceNumber"]) > int(old_seqs[-1])
        await second.call(ddb, "put_item", TableName="keep-table", Item={"pk": {"S": "p9"}, "sk": {"N": "9"}})
        after = await _dynamodb_view(second, ddb, streams, "keep-table")
        assert after["records"][:8] == before_ddb["records"]
        assert int(after["records"][8][2]) == int(before_ddb["records"][7][2]) + 1
        # A reader resumes after a sequence number it saw before the restart.
        stream_arn = before_ddb["table"]["LatestStreamArn"]
        it = (await second.call(streams, "get_shard_iterator", StreamArn=stream_arn, ShardId=after["shards"][0],
                                ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                                SequenceNumber=before_ddb["records"][7][2]))["ShardIterator"]
        rest = (await second.call(streams, "get_records", ShardIterator=it))["Records"]
        assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in rest] == ["p9"]
    finally:
        await second.stop()


@pytest.mark.parametrize("name", ["kinesis.pickle", "dynamodb.pickle"])
async def test_unreadable_stream_snapshots_are_set_aside(tmp_path: Path, nursery: trio.Nursery, name: str) -> None:
    settings = settings_for(tmp_path)
    snap = tmp_path / "data" / "services"
    snap.mkdir(parents=True)
    (snap / name).write_bytes(b"\x80\x05garbage")
    reset_moto()
    s: Stack = await nursery.start(run_stack, settings)
    try:
        assert (snap / (name + ".unreadable")).read_bytes() == b"\x80\x05garbage"
        assert not (snap / name).exists()
        assert (await s.call(s.client("kinesis"), "list_streams"))["StreamNames"] == []
        assert (await s.call(s.client("dynamodb"), "list_tables"))["TableNames"] == []
    finally:
        await s.stop()
    # The next clean stop writes a fresh snapshot beside the one set aside.
    assert (snap / name).is_file() and (snap / (name + ".unreadable")).is_file()


async def test_changes_reach_the_disk_while_running(tmp_path: Path, nursery: trio.Nursery) -> None:
    """What a kill -9 would leave: the snapshot written while the daemon runs. It is copied while
    the first daemon still runs (no clean stop writes it), and a second daemon starts on the copy."""
    settings = settings_for(tmp_path, services_snapshot_interval_ms=50)
    snap = tmp_path / "data" / "services"
    blobs = snap / "s3-objects"
    big = bytes(range(256)) * 1024  # 256 KiB: its content gets a file of its own
    reset_moto()
    first: Stack = await nursery.start(run_stack, settings)
    try:
        s3, sqs = first.client("s3"), first.client("sqs")
        await first.call(s3, "create_bucket", Bucket="live-bucket")
        await first.call(s3, "put_object", Bucket="live-bucket", Key="small", Body=b"s" * 100)
        await first.call(s3, "put_object", Bucket="live-bucket", Key="big", Body=big)
        await first.call(s3, "put_object", Bucket="live-bucket", Key="gone", Body=big[:70000])
        url = (await first.call(sqs, "create_queue", QueueName="live-q"))["QueueUrl"]
        for body in ("m1", "m2", "m3"):
            await first.call(sqs, "send_message", QueueUrl=url, MessageBody=body)
        with trio.fail_after(10):
            await first.services.wait_snapshot_written()
        assert len(list(blobs.iterdir())) == 2
        before = {p.name: p.stat().st_mtime_ns for p in blobs.iterdir()}
        # A later change to S3 writes only what is new and deletes what no object names any more.
        await first.call(s3, "delete_object", Bucket="live-bucket", Key="gone")
        await first.call(s3, "put_object", Bucket="live-bucket", Key="big2", Body=big[::-1])
        got = await first.call(sqs, "receive_message", QueueUrl=url, MaxNumberOfMessages=1)
        await first.call(sqs, "delete_message", QueueUrl=url, ReceiptHandle=got["Messages"][0]["ReceiptHandle"])
        with trio.fail_after(10):
            await first.services.wait_snapshot_written()
        after = {p.name: p.stat().st_mtime_ns for p in blobs.iterdir()}
        assert len(after) == 2
        kept = set(before) & set(after)  # "big"'s file: the same, not rewritten; "gone"'s: deleted
        assert len(kept) == 1 and all(after[n] == before[n] for n in kept)
        import shutil

        await trio.to_thread.run_sync(shutil.copytree, snap, tmp_path / "copy" / "services")
    finally:
        await first.stop()

    reset_moto()
    second: Stack = await nursery.start(run_stack, attrs.evolve(settings, data_dir=tmp_path / "copy"))
    try:
        s3, sqs = second.client("s3"), second.client("sqs")
        listed = await second.call(s3, "list_objects_v2", Bucket="live-bucket")
        assert sorted(o["Key"] for o in listed["Contents"]) == ["big", "big2", "small"]
        assert (await second.call(s3, "get_object", Bucket="live-bucket", Key="small"))["Body"] == b"s" * 100
        assert (await second.call(s3, "get_object", Bucket="live-bucket", Key="big"))["Body"] == big
        assert (await second.call(s3, "get_object", Bucket="live-bucket", Key="big2"))["Body"] == big[::-1]
        url = (await second.call(sqs, "get_queue_url", QueueName="live-q"))["QueueUrl"]
        got = await second.call(sqs, "receive_message", QueueUrl=url, MaxNumberOfMessages=10)
        assert sorted(m["Body"] for m in got["Messages"]) == ["m2", "m3"]
    finally:
        await second.stop()


def _save_s3_format_1(directory: Path) -> None:
    """What flocid wrote before object content moved to files of its own: buckets pickled whole."""
    from moto.s3.models import s3_backends

    from flocid.services import persist

    buckets = [(account, partition, bucket) for account in list(s3_backends.keys())
               for partition in list(s3_backends[account].keys())
               for bucket in s3_backends[account][partition].buckets.values()]
    (directory / "s3.pickle").write_bytes(persist._dumps({"format": 1, "buckets": buckets}))


async def test_an_s3_snapshot_of_the_earlier_format_still_loads(tmp_path: Path, nursery: trio.Nursery) -> None:
    settings = settings_for(tmp_path, services_snapshot_interval_ms=0)
    big = b"b" * 100_000
    reset_moto()
    first: Stack = await nursery.start(run_stack, settings)
    s3 = first.client("s3")
    await first.call(s3, "create_bucket", Bucket="old-bucket")
    await first.call(s3, "put_object", Bucket="old-bucket", Key="big", Body=big)
    await first.call(s3, "put_object", Bucket="old-bucket", Key="small", Body=b"s")
    await first.stop()
    snap = tmp_path / "data" / "services"
    await trio.to_thread.run_sync(_save_s3_format_1, snap)
    import shutil

    shutil.rmtree(snap / "s3-objects")
    reset_moto()
    second: Stack = await nursery.start(run_stack, settings)
    try:
        s3 = second.client("s3")
        assert (await second.call(s3, "get_object", Bucket="old-bucket", Key="big"))["Body"] == big
        assert (await second.call(s3, "get_object", Bucket="old-bucket", Key="small"))["Body"] == b"s"
    finally:
        await second.stop()
    # The clean stop wrote the current format: the big object's content in a file of its own.
    assert len(list((snap / "s3-objects").iterdir())) == 1


async def test_an_s3_snapshot_missing_a_content_file_is_set_aside_whole(tmp_path: Path, nursery: trio.Nursery) -> None:
    settings = settings_for(tmp_path, services_snapshot_interval_ms=0)
    reset_moto()
    first: Stack = await nursery.start(run_stack, settings)
    s3, sqs = first.client("s3"), first.client("sqs")
    await first.call(s3, "create_bucket", Bucket="b-lost")
    await first.call(s3, "put_object", Bucket="b-lost", Key="a", Body=b"a" * 100_000)
    await first.call(s3, "put_object", Bucket="b-lost", Key="b", Body=b"b" * 100_000)
    await first.call(sqs, "create_queue", QueueName="still-here")
    await first.stop()
    snap = tmp_path / "data" / "services"
    files = sorted((snap / "s3-objects").iterdir())
    assert len(files) == 2
    files[0].unlink()
    reset_moto()
    second: Stack = await nursery.start(run_stack, settings)
    try:
        assert (await second.call(second.client("s3"), "list_buckets"))["Buckets"] == []
        assert (await second.call(second.client("sqs"), "get_queue_url", QueueName="still-here"))["QueueUrl"]
    finally:
        await second.stop()
    # The pickle and the content files it names are kept aside together, for a person to look at,
    # and the fresh snapshot did not delete them.
    assert (snap / "s3.pickle.unreadable").is_file()
    assert [p.name for p in (snap / "s3-objects.unreadable").iterdir()] == [files[1].name]



async def test_busy_moto_does_not_stall_the_lambda_api(stack: Stack) -> None:
    """While moto is busy (its limiter held, as during a slow upload), S3 requests wait but the
    Lambda API on the same port still answers: moto never runs on the trio thread."""
    s3 = stack.client("s3")
    await stack.call(s3, "create_bucket", Bucket="busy-bucket")
    finished = trio.Event()

    async def put() -> None:
        await stack.call(s3, "put_object", Bucket="busy-bucket", Key="k", Body=b"x")
        finished.set()

    async with trio.open_nursery() as n:
        async with stack.services._limiter:
            n.start_soon(put)
            with trio.fail_after(10):
                out = await stack.call(stack.client("lambda"), "list_functions")
            assert out["Functions"] == []
            assert not finished.is_set()  # the S3 write is still queued behind moto's limiter
        with trio.fail_after(10):
            await finished.wait()
    assert await stack.services.get_s3_object("busy-bucket", "k") == b"x"


async def test_presigned_url_get(stack: Stack) -> None:
    s3 = stack.client("s3")
    await stack.call(s3, "create_bucket", Bucket="signed-bucket")
    await stack.call(s3, "put_object", Bucket="signed-bucket", Key="doc.txt", Body=b"presigned")
    v4 = _client_with(stack.url, "us-east-1", "s3", {"signature_version": "s3v4"})
    params = {"Bucket": "signed-bucket", "Key": "doc.txt"}
    urls = [s3.generate_presigned_url("get_object", Params=params),  # boto3's default: SigV2 query
            v4.generate_presigned_url("get_object", Params=params)]
    assert "X-Amz-Credential=" in urls[1]

    def fetch(url: str) -> bytes:
        import urllib.request

        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback test URL
            return bytes(resp.read())

    for url in urls:
        assert await trio.to_thread.run_sync(fetch, url) == b"presigned"


# ---- the sans-IO dispatch rules -------------------------------------------------------------------


@pytest.mark.parametrize(("host", "expected"), [
    ("my-bucket.localhost:4566", ("my-bucket", "localhost:4566")),
    # Local bases become plain localhost: moto reads any *.localhost.floci.io as one more virtual host.
    ("my-bucket.localhost.floci.io:4566", ("my-bucket", "localhost:4566")),
    ("my.dotted.bucket.localhost.floci.io", ("my.dotted.bucket", "localhost")),
    ("my-bucket.s3.localhost.floci.io:4566", ("my-bucket", "localhost:4566")),
    ("my-bucket.s3.us-west-2.amazonaws.com", ("my-bucket", "s3.us-west-2.amazonaws.com")),
    ("my-bucket.flocihost:4566", ("my-bucket", "localhost:4566")),
    ("localhost:4566", None),
    ("localhost.floci.io:4566", None),
    ("s3.localhost.floci.io:4566", None),
    ("127.0.0.1:4566", None),
    ("s3.amazonaws.com", None),
    ("evil-localhost:4566", None),
])
def test_virtual_host_bucket(host: str, expected: tuple[str, str] | None) -> None:
    from flocid.services.dispatch import virtual_host_bucket

    assert virtual_host_bucket(host, ["flocihost"]) == expected


@pytest.mark.parametrize(("method", "path", "query", "status", "expected"), [
    ("PUT", "/b/k", b"", 200, ("b", "k")),
    ("PUT", "/b/dir/k", b"x-id=PutObject", 200, ("b", "dir/k")),
    ("PUT", "/b/k", b"", 404, None),
    ("PUT", "/b", b"", 200, None),  # CreateBucket
    ("PUT", "/b/k", b"tagging", 200, None),
    ("PUT", "/b/k", b"partNumber=1&uploadId=u", 200, None),  # UploadPart
    ("POST", "/b/k", b"uploadId=u", 200, ("b", "k")),  # CompleteMultipartUpload
    ("POST", "/b/k", b"uploads", 200, None),  # CreateMultipartUpload
    ("DELETE", "/b/k", b"", 204, None),
])
def test_changed_object(method: str, path: str, query: bytes, status: int,
                        expected: tuple[str, str] | None) -> None:
    from flocid.services.dispatch import changed_object

    assert changed_object(method, path, query, status) == expected


def test_service_name() -> None:
    from flocid.services.dispatch import service_name

    def scope(headers: dict[str, str], query: bytes = b"") -> dict[str, Any]:
        return {"headers": [(k.encode(), v.encode()) for k, v in headers.items()], "query_string": query}

    signed = {"authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/eu-west-1/kinesis/aws4_request, "
                               "SignedHeaders=host, Signature=abc"}
    assert service_name(scope(signed)) == "kinesis"
    assert service_name(scope({"x-amz-target": "DynamoDBStreams_20120810.GetRecords"})) == "dynamodb"
    assert service_name(scope({"x-amz-target": "Logs_20140328.PutLogEvents"})) == "logs"
    assert service_name(scope({}, b"Action=ListQueues")) == "sqs"
    assert service_name(scope({"content-type": "application/x-www-form-urlencoded"}),
                        b"Action=SendMessage&QueueUrl=x") == "sqs"
    assert service_name(scope({})) == "s3"
    assert service_name(scope({}, b"X-Amz-Credential=test%2F20260101%2Fus-east-1%2Fs3%2Faws4_request")) == "s3"


async def test_unsigned_requests_reach_their_service(stack: Stack) -> None:
    """curl-style requests with no signature: the target or Action picks the service."""
    import urllib.request

    def post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(stack.url + path, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test URL
            return resp.status, bytes(resp.read())

    await stack.call(stack.client("kinesis"), "create_stream", StreamName="unsigned", ShardCount=1)
    status, body = await trio.to_thread.run_sync(
        post, "/", b"{}", {"X-Amz-Target": "Kinesis_20131202.ListStreams",
                           "Content-Type": "application/x-amz-json-1.1"})
    assert status == 200
    assert json.loads(body)["StreamNames"] == ["unsigned"]
    status, body = await trio.to_thread.run_sync(
        post, "/", b"Action=CreateQueue&QueueName=form-queue",
        {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert b"/000000000000/form-queue</QueueUrl>" in body
