"""Event source mapping with real containers: 1,000 SQS messages, each processed exactly once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from flocid.daemon import Daemon, run_daemon
from tests.conftest import ROLE, Aws, _Async, client, make_zip, settings_for
from tests.integration.conftest import require_docker as _require_docker

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def _docker_ready() -> None:
    _require_docker()


@pytest.fixture
async def stack(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[Daemon, Aws, Any]]:
    d: Daemon = await nursery.start(run_daemon, settings_for(
        tmp_path, executor="docker", ecr_base_uri="flocid.local", listen_docker_bridge=True, poll_interval_ms=100))
    yield d, Aws(d.url), _Async(client(d.url, service="sqs"))
    d.stop()


FORWARDER = """
import boto3, os, json
sqs = boto3.client("sqs")
OUT = os.environ["OUT_URL"]
def handler(event, context):
    entries = [{"Id": str(i), "MessageBody": r["body"]} for i, r in enumerate(event["Records"])]
    for start in range(0, len(entries), 10):
        sqs.send_message_batch(QueueUrl=OUT, Entries=entries[start:start + 10])
    return {"n": len(entries)}
"""


async def test_1000_sqs_messages_each_processed_exactly_once(stack: tuple[Daemon, Aws, Any]) -> None:
    d, aws, sqs = stack
    src = (await sqs.create_queue(QueueName="in", Attributes={"VisibilityTimeout": "60"}))["QueueUrl"]
    out = (await sqs.create_queue(QueueName="out"))["QueueUrl"]
    src_arn = (await sqs.get_queue_attributes(QueueUrl=src, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    # The function reaches flocid's SQS through AWS_ENDPOINT_URL; the queue URL it gets must be one
    # a container can use, so hand it the path and let boto3 use its endpoint.
    out_in_container = "http://" + d.invoker._executor.advertise_host + ":" + d.url.rsplit(":", 1)[1] + "/" + out.split("/", 3)[3]
    await aws.lambda_.create_function(
        FunctionName="fwd", Runtime="python3.13", Role=ROLE, Handler="index.handler", Timeout=30,
        Code={"ZipFile": make_zip({"index.py": FORWARDER})}, Environment={"Variables": {"OUT_URL": out_in_container}})
    for start in range(0, 1000, 10):
        await sqs.send_message_batch(QueueUrl=src, Entries=[
            {"Id": str(i), "MessageBody": json.dumps({"i": i})} for i in range(start, start + 10)])
    await aws.lambda_.create_event_source_mapping(
        FunctionName="fwd", EventSourceArn=src_arn, BatchSize=10, ScalingConfig={"MaximumConcurrency": 5})
    seen: list[int] = []
    with trio.fail_after(240):
        while len(seen) < 1000:
            got = await sqs.receive_message(QueueUrl=out, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for m in got.get("Messages", []):
                seen.append(json.loads(m["Body"])["i"])
                await sqs.delete_message(QueueUrl=out, ReceiptHandle=m["ReceiptHandle"])
    assert sorted(seen) == list(range(1000)), "every message exactly once"
    with trio.fail_after(60):
        while True:
            attrs = (await sqs.get_queue_attributes(QueueUrl=src, AttributeNames=["All"]))["Attributes"]
            if attrs["ApproximateNumberOfMessages"] == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0":
                break
            await trio.sleep(0.2)
    extra = await sqs.receive_message(QueueUrl=out, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    assert not extra.get("Messages"), "no message processed twice"
