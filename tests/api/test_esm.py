"""Event source mappings end to end: boto3 through flocid's port, the process executor running real
awslambdaric handlers, the embedded moto SQS.

Until the lead wires ``EsmService`` into ``flocid.daemon``, the fixture wraps ``create_app`` /
``create_services_app`` to build it next to the daemon and runs its supervisor beside it.
Handlers append what they saw to a file; waits re-check it (or the queue) after each poller cycle
(``EsmService.wait_activity``), under ``fail_after``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from flocid.daemon import Daemon, run_daemon
from flocid.esm.service import EsmService
from tests.api.test_functions import expect_error
from tests.conftest import ROLE, Aws, _Async, client, make_zip, settings_for

pytest.importorskip("awslambdaric", reason="awslambdaric is needed to run real handlers")

ACCOUNT = "000000000000"
@attrs.define
class Stack:
    daemon: Daemon
    esm: EsmService
    aws: Aws
    sqs: Any


@contextlib.asynccontextmanager
async def open_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> AsyncIterator[Stack]:
    """A daemon as `flocid serve` builds it (ESM included), with a short poll interval."""
    settings = dict(executor="process", poll_interval_ms=50)
    settings.update(kw)
    async with trio.open_nursery() as nursery:
        d: Daemon = await nursery.start(run_daemon, settings_for(tmp_path, **settings))
        try:
            yield Stack(d, d.esm, Aws(d.url), _Async(client(d.url, service="sqs")))
        finally:
            nursery.cancel_scope.cancel()


async def wait_for(esm: EsmService, pred: Callable[[], Any], seconds: float = 30) -> None:
    """Re-check ``pred`` after each poller cycle of the ESM service, under a deadline."""
    with trio.fail_after(seconds):
        while not await pred():
            await esm.wait_activity()


def recorder(out: Path, body: str = "") -> bytes:
    """A handler that appends one JSON line per invocation to ``out``, then runs ``body``."""
    code = (
        "import json, os, time\n"
        f"OUT = {str(out)!r}\n"
        "def handler(event, context):\n"
        "    t0 = time.time()\n"
        "    bodies = [r['body'] for r in event['Records']]\n"
        "    ids = {r['body']: r['messageId'] for r in event['Records']}\n"
        f"{body}"
        "    line = json.dumps({'pid': os.getpid(), 't0': t0, 't1': time.time(), 'bodies': bodies,\n"
        "                       'rc': [r['attributes']['ApproximateReceiveCount'] for r in event['Records']],\n"
        "                       'rec': event['Records'][0]}) + '\\n'\n"
        "    fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
        "    os.write(fd, line.encode())  # one append per line: concurrent handlers never interleave\n"
        "    os.close(fd)\n"
        "    return RESULT(bodies, ids) if 'RESULT' in globals() else None\n"
    )
    return make_zip({"index.py": code})


def lines(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    # Only whole lines: a handler may be writing the last one right now.
    text = out.read_text()
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines() if x.strip()]


async def make_fn(aws: Aws, name: str, code: bytes, fn_timeout: int = 10) -> str:
    r = await aws.lambda_.create_function(FunctionName=name, Runtime="python3.13", Role=ROLE,
                                          Handler="index.handler", Code={"ZipFile": code}, Timeout=fn_timeout)
    return str(r["FunctionArn"])


async def make_queue(sqs: Any, name: str, vt: int = 30, dlq: str | None = None, max_receive: int = 2) -> tuple[str, str]:
    attrs_ = {"VisibilityTimeout": str(vt)}
    if dlq is not None:
        attrs_["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": dlq, "maxReceiveCount": str(max_receive)})
    url = (await sqs.create_queue(QueueName=name, Attributes=attrs_))["QueueUrl"]
    return url, f"arn:aws:sqs:us-east-1:{ACCOUNT}:{name}"


async def count(sqs: Any, url: str) -> int:
    a = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


async def send_all(sqs: Any, url: str, bodies: list[str]) -> None:
    for i in range(0, len(bodies), 10):
        entries = [{"Id": str(j), "MessageBody": b} for j, b in enumerate(bodies[i:i + 10])]
        await sqs.send_message_batch(QueueUrl=url, Entries=entries)


# ---- CRUD -------------------------------------------------------------------------------------------


async def test_crud_shapes_states_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_stack(tmp_path, monkeypatch, executor="none") as s:
        lam = s.aws.lambda_
        await make_fn(s.aws, "f", make_zip({"index.py": "def handler(e, c):\n    return 1\n"}))
        _url, arn = await make_queue(s.sqs, "q1")
        out = await lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="f")
        assert out["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert out["State"] == "Creating"
        assert out["BatchSize"] == 10 and out["MaximumBatchingWindowInSeconds"] == 0
        assert out["FunctionResponseTypes"] == [] and out["StateTransitionReason"] == "USER_INITIATED"
        assert out["FunctionArn"] == f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:f"
        uid = out["UUID"]
        assert out["EventSourceMappingArn"] == f"arn:aws:lambda:us-east-1:{ACCOUNT}:event-source-mapping:{uid}"
        await s.esm.wait_settled(uid)
        got = await lam.get_event_source_mapping(UUID=uid)
        assert got["State"] == "Enabled"

        # errors, with AWS's codes and messages
        await expect_error(lam.create_event_source_mapping(FunctionName="f"), 400,
                           "InvalidParameterValueException", "Unrecognized event source.")
        await expect_error(lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="nope"), 400,
                           "InvalidParameterValueException", "Function does not exist")
        await expect_error(
            lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="f"), 409, "ResourceConflictException",
            f'An event source mapping with SQS arn (" {arn} ") and function (" f ") already exists. Please '
            f"update or delete the existing mapping with UUID {uid}")
        _u2, arn2 = await make_queue(s.sqs, "q2")
        await expect_error(
            lam.create_event_source_mapping(EventSourceArn=arn2, FunctionName="f", BatchSize=11), 400,
            "InvalidParameterValueException",
            "Maximum batch window in seconds must be greater than 0 if maximum batch size is greater than 10")
        await expect_error(
            lam.create_event_source_mapping(EventSourceArn=arn2, FunctionName="f",
                                            FilterCriteria={"Filters": [{"Pattern": "simple string"}]}),
            400, "InvalidParameterValueException", "Invalid filter pattern definition.")
        await expect_error(
            lam.create_event_source_mapping(EventSourceArn=arn2, FunctionName="f",
                                            DestinationConfig={"OnFailure": {"Destination": arn}}),
            400, "InvalidParameterValueException",
            "Unsupported DestinationConfig parameter for given event source mapping type.")
        await expect_error(
            lam.create_event_source_mapping(EventSourceArn=arn2, FunctionName="f",
                                            ScalingConfig={"MaximumConcurrency": 1}),
            400, "ValidationException")
        await expect_error(
            lam.create_event_source_mapping(EventSourceArn=f"arn:aws:sqs:us-east-1:{ACCOUNT}:missing",
                                            FunctionName="f"),
            400, "InvalidParameterValueException",
            "Error occurred while ReceiveMessage. SQS Error Code: AWS.SimpleQueueService.NonExistentQueue. "
            "SQS Error Message: The specified queue does not exist.")
        kin = f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/nostream"
        await expect_error(lam.create_event_source_mapping(EventSourceArn=kin, FunctionName="f"), 400,
                           "InvalidParameterValueException",
                           "1 validation error detected: Value null at 'startingPosition' failed to satisfy "
                           "constraint: Member must not be null.")
        await expect_error(
            lam.create_event_source_mapping(EventSourceArn=kin, FunctionName="f", StartingPosition="invalid"),
            400, "ValidationException",
            "1 validation error detected: Value 'invalid' at 'startingPosition' failed to satisfy constraint: "
            "Member must satisfy enum value set: [LATEST, AT_TIMESTAMP, TRIM_HORIZON]")
        ddb = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/t/stream/2025-01-01T00:00:00.000"
        await expect_error(
            lam.create_event_source_mapping(EventSourceArn=ddb, FunctionName="f", StartingPosition="AT_TIMESTAMP",
                                            StartingPositionTimestamp=1),
            400, "InvalidParameterValueException", f"Unsupported starting position for arn type: {ddb}")
        await expect_error(
            lam.create_event_source_mapping(EventSourceArn=kin, FunctionName="f", StartingPosition="LATEST"),
            400, "InvalidParameterValueException", f"Stream not found: {kin}")
        for op in (lam.get_event_source_mapping, lam.delete_event_source_mapping):
            await expect_error(op(UUID="00000000-0000-0000-0000-000000000000"), 404,
                               "ResourceNotFoundException", "The resource you requested does not exist.")
        await expect_error(lam.update_event_source_mapping(UUID="00000000-0000-0000-0000-000000000000",
                                                           BatchSize=5),
                           404, "ResourceNotFoundException", "The resource you requested does not exist.")

        # update while the mapping is in a transitional state: AWS's 400 ResourceInUseException
        for state in ("Creating", "Enabling", "Updating", "Disabling", "Deleting"):
            s.esm.mappings[uid]["State"] = state
            await expect_error(lam.update_event_source_mapping(UUID=uid, BatchSize=5), 400,
                               "ResourceInUseException", "Cannot update the event source mapping because it is in use.")
        # delete while it is being updated: the same error ("...or you tried to delete an event source
        # mapping currently UPDATING", the API model's documentation of ResourceInUseException)
        for state in ("Enabling", "Updating", "Disabling"):
            s.esm.mappings[uid]["State"] = state
            await expect_error(lam.delete_event_source_mapping(UUID=uid), 400,
                               "ResourceInUseException", "Cannot delete the event source mapping because it is in use.")
        s.esm.mappings[uid]["State"] = "Enabled"
        assert (await lam.get_event_source_mapping(UUID=uid))["BatchSize"] == 10

        # update: disable, then enable with a window and a bigger batch
        up = await lam.update_event_source_mapping(UUID=uid, Enabled=False)
        assert up["ResponseMetadata"]["HTTPStatusCode"] == 202 and up["State"] == "Disabling"
        await s.esm.wait_settled(uid)
        assert (await lam.get_event_source_mapping(UUID=uid))["State"] == "Disabled"
        up = await lam.update_event_source_mapping(UUID=uid, Enabled=True, BatchSize=50,
                                                   MaximumBatchingWindowInSeconds=1,
                                                   ScalingConfig={"MaximumConcurrency": 3})
        assert up["State"] == "Enabling" and up["BatchSize"] == 50
        assert up["ScalingConfig"] == {"MaximumConcurrency": 3}
        await s.esm.wait_settled(uid)

        # list: by function, by source, paging
        second = await lam.create_event_source_mapping(EventSourceArn=arn2, FunctionName="f")
        by_fn = await lam.list_event_source_mappings(FunctionName="f")
        assert {m["UUID"] for m in by_fn["EventSourceMappings"]} == {uid, second["UUID"]}
        by_src = await lam.list_event_source_mappings(EventSourceArn=arn2)
        assert [m["UUID"] for m in by_src["EventSourceMappings"]] == [second["UUID"]]
        page = await lam.list_event_source_mappings(MaxItems=1)
        assert len(page["EventSourceMappings"]) == 1 and "NextMarker" in page
        rest = await lam.list_event_source_mappings(Marker=page["NextMarker"])
        assert len(rest["EventSourceMappings"]) == 1 and "NextMarker" not in rest

        gone = await lam.delete_event_source_mapping(UUID=second["UUID"])
        assert gone["ResponseMetadata"]["HTTPStatusCode"] == 202 and gone["State"] == "Deleting"
        await s.esm.wait_settled(second["UUID"])
        await expect_error(lam.get_event_source_mapping(UUID=second["UUID"]), 404, "ResourceNotFoundException")


# ---- SQS pollers ----------------------------------------------------------------------------------------


async def test_every_message_processed_exactly_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        await make_fn(s.aws, "rec", recorder(out))
        url, arn = await make_queue(s.sqs, "work")
        bodies = [f"m{i}" for i in range(250)]
        await send_all(s.sqs, url, bodies)
        m = await s.aws.lambda_.create_event_source_mapping(EventSourceArn=arn, FunctionName="rec", BatchSize=10)

        async def drained() -> bool:
            return await count(s.sqs, url) == 0 and sum(len(x["bodies"]) for x in lines(out)) >= 250

        await wait_for(s.esm, drained, 60)
        seen = [b for x in lines(out) for b in x["bodies"]]
        assert sorted(seen) == sorted(bodies)  # each exactly once
        assert max(len(x["bodies"]) for x in lines(out)) <= 10
        rec = lines(out)[0]["rec"]
        assert rec["eventSource"] == "aws:sqs" and rec["eventSourceARN"] == arn and rec["awsRegion"] == "us-east-1"
        assert set(rec["attributes"]) >= {"ApproximateReceiveCount", "SentTimestamp", "SenderId",
                                          "ApproximateFirstReceiveTimestamp"}
        assert {"messageId", "receiptHandle", "md5OfBody", "messageAttributes"} <= set(rec)
        stats = s.esm.statistics(m["UUID"])
        assert stats is not None and stats.failed == 0


async def test_report_batch_item_failures_leaves_exactly_the_failures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen.jsonl"
    handler = recorder(out, (
        "    global RESULT\n"
        "    RESULT = lambda bodies, ids: {'batchItemFailures': [{'itemIdentifier': ids[b]} for b in bodies "
        "if b.startswith('bad')]}\n"
    ))
    async with open_stack(tmp_path, monkeypatch) as s:
        await make_fn(s.aws, "partial", handler)
        dlq_url, dlq_arn = await make_queue(s.sqs, "partial-dlq")
        url, arn = await make_queue(s.sqs, "partial-q", vt=1, dlq=dlq_arn, max_receive=2)
        bodies = [f"bad{i}" if i % 7 == 0 else f"ok{i}" for i in range(40)]
        await send_all(s.sqs, url, bodies)
        await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="partial", FunctionResponseTypes=["ReportBatchItemFailures"])
        bad = sorted(b for b in bodies if b.startswith("bad"))

        async def all_bad_in_dlq() -> bool:
            return await count(s.sqs, dlq_url) == len(bad) and await count(s.sqs, url) == 0

        await wait_for(s.esm, all_bad_in_dlq, 30)
        dead: list[str] = []
        while len(dead) < len(bad):
            r = await s.sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)
            dead += [x["Body"] for x in r.get("Messages", [])]
        assert sorted(dead) == bad
        seen = [b for x in lines(out) for b in x["bodies"]]
        assert sorted(b for b in seen if b.startswith("ok")) == sorted(b for b in bodies if b.startswith("ok"))
        assert sorted(b for b in seen if b.startswith("bad")) == sorted(bad * 2)  # maxReceiveCount 2


async def test_errors_and_malformed_responses_send_poison_to_the_dlq(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen.jsonl"
    handler = recorder(out, (
        "    global RESULT\n"
        "    def RESULT(b, i):\n"
        "        if 'poison' in b:\n"
        "            raise ValueError('poison')\n"
        "        return {'batchItemFailures': [{'nope': 1}]} if 'malformed' in b else None\n"
    ))
    async with open_stack(tmp_path, monkeypatch) as s:
        await make_fn(s.aws, "poison", handler)
        dlq_url, dlq_arn = await make_queue(s.sqs, "p-dlq")
        url, arn = await make_queue(s.sqs, "p-q", vt=1, dlq=dlq_arn, max_receive=3)
        await send_all(s.sqs, url, ["fine", "poison", "malformed"])
        await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="poison", BatchSize=1, FunctionResponseTypes=["ReportBatchItemFailures"])

        async def settled() -> bool:
            return await count(s.sqs, dlq_url) == 2 and await count(s.sqs, url) == 0

        await wait_for(s.esm, settled, 30)
        r = await s.sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)
        assert sorted(x["Body"] for x in r["Messages"]) == ["malformed", "poison"]
        seen = [(b, rc) for x in lines(out) for b, rc in zip(x["bodies"], x["rc"], strict=True)]
        assert [rc for b, rc in seen if b == "fine"] == ["1"]
        assert sorted(rc for b, rc in seen if b == "poison") == ["1", "2", "3"]
        assert sorted(rc for b, rc in seen if b == "malformed") == ["1", "2", "3"]


async def test_maximum_concurrency_is_observed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen.jsonl"
    handler = recorder(out, "    time.sleep(0.3)\n")
    async with open_stack(tmp_path, monkeypatch) as s:
        await make_fn(s.aws, "slow", handler)
        url, arn = await make_queue(s.sqs, "slow-q")
        await send_all(s.sqs, url, [f"s{i}" for i in range(24)])
        m = await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="slow", BatchSize=1, ScalingConfig={"MaximumConcurrency": 3})

        async def done() -> bool:
            return len(lines(out)) >= 24 and await count(s.sqs, url) == 0

        await wait_for(s.esm, done, 60)
        events = sorted([(x["t0"], 1) for x in lines(out)] + [(x["t1"], -1) for x in lines(out)])
        level = peak = 0
        for _t, d in events:
            level += d
            peak = max(peak, level)
        assert peak == 3  # parallel batches, never more than MaximumConcurrency
        stats = s.esm.statistics(m["UUID"])
        assert stats is not None and stats.max_in_flight == 3


async def test_filtered_out_messages_are_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        await make_fn(s.aws, "flt", recorder(out))
        url, arn = await make_queue(s.sqs, "flt-q")
        await send_all(s.sqs, url, [json.dumps({"kind": "a", "n": i}) for i in range(5)]
                       + [json.dumps({"kind": "b"}), "plain text"])
        await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="flt",
            FilterCriteria={"Filters": [{"Pattern": json.dumps({"body": {"kind": ["a"], "n": [{"numeric": [">=", 2]}]}})}]})

        async def drained() -> bool:
            return await count(s.sqs, url) == 0

        await wait_for(s.esm, drained, 30)
        seen = sorted(json.loads(b)["n"] for x in lines(out) for b in x["bodies"])
        assert seen == [2, 3, 4]


async def test_mappings_survive_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        await make_fn(s.aws, "keep", recorder(out))
        url, arn = await make_queue(s.sqs, "keep-q")
        m = await s.aws.lambda_.create_event_source_mapping(EventSourceArn=arn, FunctionName="keep")
        disabled = await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=(await make_queue(s.sqs, "off-q"))[1], FunctionName="keep", Enabled=False)
        await s.esm.wait_settled(m["UUID"])
        await s.esm.wait_settled(disabled["UUID"])
    async with open_stack(tmp_path, monkeypatch) as s:
        got = await s.aws.lambda_.get_event_source_mapping(UUID=m["UUID"])
        assert got["State"] == "Enabled" and got["EventSourceArn"] == arn
        assert (await s.aws.lambda_.get_event_source_mapping(UUID=disabled["UUID"]))["State"] == "Disabled"
        assert m["UUID"] in s.esm.pollers and disabled["UUID"] not in s.esm.pollers
        await send_all(s.sqs, url, ["after-restart"])

        async def seen() -> bool:
            return any("after-restart" in x["bodies"] for x in lines(out))

        await wait_for(s.esm, seen, 30)


async def test_throttles_are_retried_not_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        await make_fn(s.aws, "one", recorder(out, "    time.sleep(0.1)\n"))
        await s.aws.lambda_.put_function_concurrency(FunctionName="one", ReservedConcurrentExecutions=1)
        url, arn = await make_queue(s.sqs, "thr-q")
        bodies = [f"t{i}" for i in range(12)]
        await send_all(s.sqs, url, bodies)
        m = await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="one", BatchSize=1, ScalingConfig={"MaximumConcurrency": 3})

        async def done() -> bool:
            return len(lines(out)) >= 12 and await count(s.sqs, url) == 0

        await wait_for(s.esm, done, 60)
        assert sorted(b for x in lines(out) for b in x["bodies"]) == sorted(bodies)
        stats = s.esm.statistics(m["UUID"])
        assert stats is not None and stats.throttled > 0 and stats.failed == 0


# ---- streams ---------------------------------------------------------------------------------------------

KINESIS_HANDLER = (
    "import base64, json\n"
    "OUT = {out!r}\n"
    "def handler(event, context):\n"
    "    rows = [[r['eventID'].split(':')[0], base64.b64decode(r['kinesis']['data']).decode()]\n"
    "            for r in event['Records']]\n"
    "    if any(d == 'boom' for _s, d in rows):\n"
    "        raise ValueError('boom')\n"
    "    with open(OUT, 'a') as f:\n"
    "        f.write(json.dumps({{'rows': rows, 'rec': event['Records'][0]}}) + '\\n')\n"
)


async def test_kinesis_in_order_per_shard_with_durable_checkpoints(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "kin.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        kin = _Async(client(s.daemon.url, service="kinesis"))
        await kin.create_stream(StreamName="st", ShardCount=2)
        arn = (await kin.describe_stream(StreamName="st"))["StreamDescription"]["StreamARN"]
        await make_fn(s.aws, "kfn", make_zip({"index.py": KINESIS_HANDLER.format(out=str(out))}))
        sent: list[str] = []
        for i in range(30):
            data = f"{i % 3}-{i}"
            sent.append(data)
            await kin.put_record(StreamName="st", Data=data.encode(), PartitionKey=f"pk{i % 3}")
        m = await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="kfn", StartingPosition="TRIM_HORIZON", BatchSize=4)
        assert m["BatchSize"] == 4 and m["MaximumRetryAttempts"] == -1 and m["ParallelizationFactor"] == 1
        assert m["StateTransitionReason"] == "User action"

        def rows() -> list[list[str]]:
            return [r for x in lines(out) for r in x["rows"]]

        async def all_seen() -> bool:
            return len(rows()) >= 30

        await wait_for(s.esm, all_seen, 30)
        assert sorted(d for _s, d in rows()) == sorted(sent)
        # per partition key (one shard each), in the order sent
        for pk in "012":
            assert [d for _s, d in rows() if d.startswith(pk + "-")] == [x for x in sent if x.startswith(pk + "-")]
        rec = lines(out)[0]["rec"]
        assert rec["eventSource"] == "aws:kinesis" and rec["eventName"] == "aws:kinesis:record"
        assert rec["kinesis"]["kinesisSchemaVersion"] == "1.0" and rec["invokeIdentityArn"] == ROLE

        # The supervisor restarts (a daemon restart without losing the in-memory stream): the new
        # one resumes from the durable checkpoints, so nothing is delivered twice.
        uid = m["UUID"]
        await s.aws.lambda_.update_event_source_mapping(UUID=uid, Enabled=False)
        await s.esm.wait_settled(uid)
        checkpoints = s.esm.store.checkpoints(uid)
        assert len(checkpoints) == 2
        await kin.put_record(StreamName="st", Data=b"after", PartitionKey="pk0")
        await s.aws.lambda_.update_event_source_mapping(UUID=uid, Enabled=True)

        async def after_seen() -> bool:
            return any(d == "after" for _s, d in rows())

        await wait_for(s.esm, after_seen, 30)
        assert len(rows()) == 31


async def test_kinesis_failures_go_to_the_on_failure_destination(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "kin.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        kin = _Async(client(s.daemon.url, service="kinesis"))
        await kin.create_stream(StreamName="fs", ShardCount=1)
        arn = (await kin.describe_stream(StreamName="fs"))["StreamDescription"]["StreamARN"]
        dest_url, dest_arn = await make_queue(s.sqs, "kin-failures")
        await make_fn(s.aws, "kf", make_zip({"index.py": KINESIS_HANDLER.format(out=str(out))}))
        for data in ("a", "b", "boom", "c"):
            await kin.put_record(StreamName="fs", Data=data.encode(), PartitionKey="p")
        await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="kf", StartingPosition="TRIM_HORIZON", BatchSize=10,
            MaximumRetryAttempts=1, BisectBatchOnFunctionError=True,
            DestinationConfig={"OnFailure": {"Destination": dest_arn}})

        async def failed_once() -> bool:
            return await count(s.sqs, dest_url) >= 1 and any(d == "c" for x in lines(out) for _s, d in x["rows"])

        await wait_for(s.esm, failed_once, 30)
        got = await s.sqs.receive_message(QueueUrl=dest_url, MaxNumberOfMessages=10)
        assert len(got["Messages"]) == 1
        doc = json.loads(got["Messages"][0]["Body"])
        assert doc["requestContext"]["condition"] == "RetryAttemptsExhausted"
        info = doc["KinesisBatchInfo"]
        assert info["batchSize"] == 1 and info["streamArn"] == arn  # bisected down to the bad record
        assert sorted(d for x in lines(out) for _s, d in x["rows"]) == ["a", "b", "c"]


async def test_a_batch_retrying_forever_lets_the_mapping_stop_and_is_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MaximumRetryAttempts -1 and a failing function: disabling still ends in Disabled (the retry
    is cut at its backoff), the checkpoint stays before the batch, and re-enabling delivers it."""
    out = tmp_path / "kin.jsonl"
    flag = tmp_path / "failing"
    flag.write_text("1")
    handler = (
        "import base64, json, os\n"
        f"OUT, FLAG = {str(out)!r}, {str(flag)!r}\n"
        "def handler(event, context):\n"
        "    if os.path.exists(FLAG):\n"
        "        raise ValueError('not yet')\n"
        "    with open(OUT, 'a') as f:\n"
        "        for r in event['Records']:\n"
        "            f.write(base64.b64decode(r['kinesis']['data']).decode() + '\\n')\n"
    )
    async with open_stack(tmp_path, monkeypatch) as s:
        kin = _Async(client(s.daemon.url, service="kinesis"))
        await kin.create_stream(StreamName="rs", ShardCount=1)
        arn = (await kin.describe_stream(StreamName="rs"))["StreamDescription"]["StreamARN"]
        await make_fn(s.aws, "rf", make_zip({"index.py": handler}))
        for data in ("x", "y"):
            await kin.put_record(StreamName="rs", Data=data.encode(), PartitionKey="p")
        m = await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="rf", StartingPosition="TRIM_HORIZON", BatchSize=10)
        uid = m["UUID"]
        assert m["MaximumRetryAttempts"] == -1

        async def failing() -> bool:
            stats = s.esm.statistics(uid)
            return stats is not None and stats.failed >= 2

        await wait_for(s.esm, failing, 30)
        await s.aws.lambda_.update_event_source_mapping(UUID=uid, Enabled=False)
        with trio.fail_after(15):
            await s.esm.wait_settled(uid)
        assert (await s.aws.lambda_.get_event_source_mapping(UUID=uid))["State"] == "Disabled"
        assert s.esm.store.checkpoints(uid) == {}  # nothing settled: nothing checkpointed
        assert not out.exists()

        flag.unlink()
        await s.aws.lambda_.update_event_source_mapping(UUID=uid, Enabled=True)

        async def delivered() -> bool:
            return out.exists() and out.read_text().split() == ["x", "y"]

        await wait_for(s.esm, delivered, 30)


DDB_HANDLER = (
    "import json\n"
    "OUT = {out!r}\n"
    "def handler(event, context):\n"
    "    with open(OUT, 'a') as f:\n"
    "        for r in event['Records']:\n"
    "            f.write(json.dumps(r) + '\\n')\n"
)


async def test_dynamodb_stream_records_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ddb.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        ddb = _Async(client(s.daemon.url, service="dynamodb"))
        table = await ddb.create_table(
            TableName="t", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
        arn = table["TableDescription"]["LatestStreamArn"]
        await make_fn(s.aws, "dfn", make_zip({"index.py": DDB_HANDLER.format(out=str(out))}))
        await expect_error(
            s.aws.lambda_.create_event_source_mapping(EventSourceArn=arn, FunctionName="dfn",
                                                      StartingPosition="AT_TIMESTAMP", StartingPositionTimestamp=1),
            400, "InvalidParameterValueException", f"Unsupported starting position for arn type: {arn}")
        m = await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="dfn", StartingPosition="TRIM_HORIZON", BatchSize=2,
            FilterCriteria={"Filters": [{"Pattern": json.dumps({"eventName": ["INSERT", "MODIFY"]})}]})
        for i in range(5):
            await ddb.put_item(TableName="t", Item={"id": {"S": f"k{i}"}, "v": {"N": str(i)}})
        await ddb.put_item(TableName="t", Item={"id": {"S": "k0"}, "v": {"N": "100"}})
        await ddb.delete_item(TableName="t", Key={"id": {"S": "k1"}})

        async def seen() -> bool:
            return len(lines(out)) >= 6

        await wait_for(s.esm, seen, 30)
        recs = lines(out)
        assert [r["eventName"] for r in recs] == ["INSERT"] * 5 + ["MODIFY"]  # REMOVE filtered out
        assert [r["dynamodb"]["Keys"]["id"]["S"] for r in recs] == ["k0", "k1", "k2", "k3", "k4", "k0"]
        assert recs[-1]["dynamodb"]["OldImage"]["v"]["N"] == "0"
        assert all(r["eventSourceARN"] == arn and r["eventSource"] == "aws:dynamodb" for r in recs)
        # A poller restart resumes after the durable checkpoint: only the new change arrives.
        await s.aws.lambda_.update_event_source_mapping(UUID=m["UUID"], Enabled=False)
        await s.esm.wait_settled(m["UUID"])
        await ddb.put_item(TableName="t", Item={"id": {"S": "k9"}, "v": {"N": "9"}})
        await s.aws.lambda_.update_event_source_mapping(UUID=m["UUID"], Enabled=True)

        async def seen_new() -> bool:
            return len(lines(out)) >= 7

        await wait_for(s.esm, seen_new, 30)
        assert [r["dynamodb"]["Keys"]["id"]["S"] for r in lines(out)][6:] == ["k9"]


async def test_disable_lets_the_batch_in_flight_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        await make_fn(s.aws, "slow1", recorder(out, "    time.sleep(0.5)\n"))
        url, arn = await make_queue(s.sqs, "inflight-q")
        await send_all(s.sqs, url, ["only"])
        m = await s.aws.lambda_.create_event_source_mapping(EventSourceArn=arn, FunctionName="slow1")
        uid = m["UUID"]

        async def in_flight() -> bool:
            st = s.esm.statistics(uid)
            return st is not None and st.in_flight == 1

        await wait_for(s.esm, in_flight, 30)
        up = await s.aws.lambda_.update_event_source_mapping(UUID=uid, Enabled=False)
        assert up["State"] == "Disabling"
        await s.esm.wait_settled(uid)
        # The batch finished (the handler wrote its line) and was deleted, not abandoned.
        assert [x["bodies"] for x in lines(out)] == [["only"]]
        assert await count(s.sqs, url) == 0
        assert uid not in s.esm.pollers


async def test_fifo_keeps_order_per_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        await make_fn(s.aws, "fifo", recorder(out, "    time.sleep(0.02)\n"))
        url = (await s.sqs.create_queue(QueueName="q.fifo", Attributes={
            "FifoQueue": "true", "ContentBasedDeduplication": "true"}))["QueueUrl"]
        arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:q.fifo"
        sent = [(f"g{i % 3}", f"g{i % 3}-{i}") for i in range(30)]
        for group, body in sent:
            await s.sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=group)
        await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="fifo", BatchSize=2, ScalingConfig={"MaximumConcurrency": 3})

        async def done() -> bool:
            return sum(len(x["bodies"]) for x in lines(out)) >= 30 and await count(s.sqs, url) == 0

        await wait_for(s.esm, done, 60)
        seen = [b for x in sorted(lines(out), key=lambda x: x["t0"]) for b in x["bodies"]]
        for g in ("g0", "g1", "g2"):
            assert [b for b in seen if b.startswith(g + "-")] == [b for gg, b in sent if gg == g]
        attrs_ = lines(out)[0]["rec"]["attributes"]
        assert {"MessageGroupId", "SequenceNumber", "MessageDeduplicationId"} <= set(attrs_)


# ---- a daemon restart: streams and checkpoints both survive ----------------------------------------------


@contextlib.asynccontextmanager
async def open_daemon(tmp_path: Path) -> AsyncIterator[Stack]:
    """A daemon that starts from empty moto backends, as a new process does (only the snapshot in its
    data dir brings the services back), and on exit stops cleanly (``Daemon.stop``: ESM batches
    drained, then the snapshot written); leaving returns once ``run_daemon`` has."""
    from moto.core.base_backend import BackendDict

    BackendDict.reset()
    async with trio.open_nursery() as nursery:
        d: Daemon = await nursery.start(run_daemon, settings_for(tmp_path, executor="process", poll_interval_ms=50))
        try:
            yield Stack(d, d.esm, Aws(d.url), _Async(client(d.url, service="sqs")))
        finally:
            d.stop()


async def test_kinesis_mapping_resumes_from_its_checkpoint_after_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "kin.jsonl"

    def rows() -> list[list[str]]:
        return [r for x in lines(out) for r in x["rows"]]

    before = [f"{i % 4}-{i}" for i in range(20)]
    after = [f"{i % 4}-{i}" for i in range(20, 32)]
    async with open_daemon(tmp_path) as s:
        kin = _Async(client(s.daemon.url, service="kinesis"))
        await kin.create_stream(StreamName="rs", ShardCount=2)
        arn = (await kin.describe_stream(StreamName="rs"))["StreamDescription"]["StreamARN"]
        await make_fn(s.aws, "rk", make_zip({"index.py": KINESIS_HANDLER.format(out=str(out))}))
        for data in before:
            await kin.put_record(StreamName="rs", Data=data.encode(), PartitionKey=f"pk{data[0]}")
        m = await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="rk", StartingPosition="TRIM_HORIZON", BatchSize=3)

        async def old_seen() -> bool:
            return len(rows()) >= len(before)

        await wait_for(s.esm, old_seen, 30)
    assert sorted(d for _s, d in rows()) == sorted(before)
    checkpoints = lines(out)  # what the first daemon delivered, for the shard of each key below
    shard_of = {d[0]: sh for x in checkpoints for sh, d in x["rows"]}
    assert len(set(shard_of.values())) == 2  # both shards carried records

    async with open_daemon(tmp_path) as s:
        kin = _Async(client(s.daemon.url, service="kinesis"))
        got = await s.aws.lambda_.get_event_source_mapping(UUID=m["UUID"])
        assert got["State"] == "Enabled" and got["EventSourceArn"] == arn
        for data in after:
            await kin.put_record(StreamName="rs", Data=data.encode(), PartitionKey=f"pk{data[0]}")

        async def new_seen() -> bool:
            return len(rows()) >= len(before) + len(after)

        await wait_for(s.esm, new_seen, 30)
        stats = s.esm.statistics(m["UUID"])
    # The stop let the last batch settle: this daemon handled exactly the new records.
    assert stats is not None and stats.records == len(after)
    seen = rows()
    # Exactly the new records after the restart: nothing twice, nothing lost...
    assert len(seen) == len(before) + len(after)
    assert sorted(d for _s, d in seen[len(before):]) == sorted(after)
    # ...each key still on its shard, and every shard's records in the order they were put.
    assert all(shard_of[d[0]] == sh for sh, d in seen)
    for shard in set(shard_of.values()):
        assert [d for sh, d in seen if sh == shard] == [d for d in before + after if shard_of[d[0]] == shard]


async def test_dynamodb_stream_mapping_resumes_from_its_checkpoint_after_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ddb.jsonl"
    async with open_daemon(tmp_path) as s:
        ddb = _Async(client(s.daemon.url, service="dynamodb"))
        table = await ddb.create_table(
            TableName="rt", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
        arn = table["TableDescription"]["LatestStreamArn"]
        await make_fn(s.aws, "rd", make_zip({"index.py": DDB_HANDLER.format(out=str(out))}))
        m = await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="rd", StartingPosition="TRIM_HORIZON", BatchSize=2)
        for i in range(5):
            await ddb.put_item(TableName="rt", Item={"id": {"S": f"k{i}"}, "v": {"N": str(i)}})

        async def old_seen() -> bool:
            return len(lines(out)) >= 5

        await wait_for(s.esm, old_seen, 30)
    assert [r["dynamodb"]["Keys"]["id"]["S"] for r in lines(out)] == ["k0", "k1", "k2", "k3", "k4"]

    async with open_daemon(tmp_path) as s:
        ddb = _Async(client(s.daemon.url, service="dynamodb"))
        assert (await ddb.describe_table(TableName="rt"))["Table"]["LatestStreamArn"] == arn
        await ddb.put_item(TableName="rt", Item={"id": {"S": "k5"}, "v": {"N": "5"}})
        await ddb.put_item(TableName="rt", Item={"id": {"S": "k0"}, "v": {"N": "100"}})  # an item from before
        await ddb.delete_item(TableName="rt", Key={"id": {"S": "k1"}})

        async def new_seen() -> bool:
            return len(lines(out)) >= 8

        await wait_for(s.esm, new_seen, 30)
        stats = s.esm.statistics(m["UUID"])
    assert stats is not None and stats.records == 3
    recs = lines(out)
    assert len(recs) == 8  # nothing delivered twice
    assert [(r["eventName"], r["dynamodb"]["Keys"]["id"]["S"]) for r in recs[5:]] == [
        ("INSERT", "k5"), ("MODIFY", "k0"), ("REMOVE", "k1")]
    assert recs[6]["dynamodb"]["OldImage"]["v"]["N"] == "0"  # the restored item's image
    assert recs[7]["dynamodb"]["OldImage"]["v"]["N"] == "1"
    seqs = [int(r["dynamodb"]["SequenceNumber"]) for r in recs]
    assert seqs == list(range(seqs[0], seqs[0] + 8))  # one shard, one unbroken sequence across the restart
    assert all(r["eventSourceARN"] == arn for r in recs)


async def test_a_checkpoint_past_the_end_of_a_shard_does_not_skip_new_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a kill -9 the services come back from an older snapshot while the checkpoints (SQLite,
    written per batch) are newer: the shard restarts from TRIM_HORIZON, so new records still arrive."""
    kin_out, ddb_out = tmp_path / "kin.jsonl", tmp_path / "ddb.jsonl"
    snap = tmp_path / "data" / "services"

    def kin_rows() -> list[str]:
        return [d for x in lines(kin_out) for _s, d in x["rows"]]

    def ddb_keys() -> list[str]:
        return [r["dynamodb"]["Keys"]["id"]["S"] for r in lines(ddb_out)]

    async def put(s: Stack, names: list[str]) -> None:
        kin = _Async(client(s.daemon.url, service="kinesis"))
        ddb = _Async(client(s.daemon.url, service="dynamodb"))
        for n in names:
            await kin.put_record(StreamName="ks", Data=n.encode(), PartitionKey="p")
            await ddb.put_item(TableName="kt", Item={"id": {"S": n}})

    async def wait_seen(s: Stack, n: str) -> None:
        async def seen() -> bool:
            return n in kin_rows() and n in ddb_keys()

        await wait_for(s.esm, seen, 30)

    async with open_daemon(tmp_path) as s:
        kin = _Async(client(s.daemon.url, service="kinesis"))
        ddb = _Async(client(s.daemon.url, service="dynamodb"))
        await kin.create_stream(StreamName="ks", ShardCount=1)
        kin_arn = (await kin.describe_stream(StreamName="ks"))["StreamDescription"]["StreamARN"]
        table = await ddb.create_table(
            TableName="kt", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"})
        await make_fn(s.aws, "kk", make_zip({"index.py": KINESIS_HANDLER.format(out=str(kin_out))}))
        await make_fn(s.aws, "kd", make_zip({"index.py": DDB_HANDLER.format(out=str(ddb_out))}))
        for fn, arn in (("kk", kin_arn), ("kd", table["TableDescription"]["LatestStreamArn"])):
            await s.aws.lambda_.create_event_source_mapping(
                EventSourceArn=arn, FunctionName=fn, StartingPosition="TRIM_HORIZON", BatchSize=1)
        await put(s, ["a", "b"])
        await wait_seen(s, "b")
    stale = {name: (snap / name).read_bytes() for name in ("kinesis.pickle", "dynamodb.pickle")}
    async with open_daemon(tmp_path) as s:
        await put(s, ["c", "d", "e"])
        await wait_seen(s, "e")
    for name, data in stale.items():  # as if killed: the snapshot from before c, d, e
        (snap / name).write_bytes(data)
    async with open_daemon(tmp_path) as s:
        await put(s, ["f"])  # moto numbers it 3: the checkpoint (5) is past the shard's end
        await wait_seen(s, "f")
    # Nothing lost; what came again is what the older snapshot held, before the new record.
    assert kin_rows() == ["a", "b", "c", "d", "e", "a", "b", "f"]
    assert ddb_keys() == ["a", "b", "c", "d", "e", "a", "b", "f"]


# ---- ParallelizationFactor and tumbling windows ---------------------------------------------------------

TIMED_KINESIS_HANDLER = (
    "import base64, json, os, time\n"
    "OUT = {out!r}\n"
    "def handler(event, context):\n"
    "    t0 = time.time()\n"
    "    time.sleep(0.3)\n"
    "    rows = [[r['kinesis']['partitionKey'], base64.b64decode(r['kinesis']['data']).decode()]\n"
    "            for r in event['Records']]\n"
    "    line = json.dumps({{'t0': t0, 't1': time.time(), 'rows': rows}}) + '\\n'\n"
    "    fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
    "    os.write(fd, line.encode())\n"
    "    os.close(fd)\n"
)


async def test_parallelization_factor_overlaps_batches_of_one_shard_in_key_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "par.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        kin = _Async(client(s.daemon.url, service="kinesis"))
        await kin.create_stream(StreamName="ps", ShardCount=1)
        arn = (await kin.describe_stream(StreamName="ps"))["StreamDescription"]["StreamARN"]
        await make_fn(s.aws, "pf", make_zip({"index.py": TIMED_KINESIS_HANDLER.format(out=str(out))}))
        sent = [(f"pk{i % 4}", f"{i % 4}-{i}") for i in range(32)]
        for key, data in sent:
            await kin.put_record(StreamName="ps", Data=data.encode(), PartitionKey=key)
        m = await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="pf", StartingPosition="TRIM_HORIZON", BatchSize=2,
            ParallelizationFactor=4)
        assert m["ParallelizationFactor"] == 4

        def rows() -> list[list[str]]:
            return [r for x in lines(out) for r in x["rows"]]

        async def all_seen() -> bool:
            return len(rows()) >= len(sent)

        await wait_for(s.esm, all_seen, 60)
        events = sorted([(x["t0"], 1) for x in lines(out)] + [(x["t1"], -1) for x in lines(out)])
        level = peak = 0
        for _t, d in events:
            level += d
            peak = max(peak, level)
        assert 1 < peak <= 4  # batches of the one shard ran side by side
        got = [r for x in sorted(lines(out), key=lambda x: x["t0"]) for r in x["rows"]]
        assert sorted(d for _k, d in got) == sorted(d for _k, d in sent)  # each exactly once
        for key in {k for k, _d in sent}:
            assert [d for k, d in got if k == key] == [d for k, d in sent if k == key]  # per key in order
            # a key's batches never overlapped
            spans = sorted((x["t0"], x["t1"]) for x in lines(out) if any(k == key for k, _d in x["rows"]))
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
        stats = s.esm.statistics(m["UUID"])
        assert stats is not None and stats.max_in_flight > 1 and stats.failed == 0

        async def checkpointed() -> bool:
            shard_cp = s.esm.store.checkpoints(m["UUID"])
            return len(shard_cp) == 1 and stats is not None and stats.records == len(sent)

        await wait_for(s.esm, checkpointed, 30)
        last = (await kin.get_records(ShardIterator=(await kin.get_shard_iterator(
            StreamName="ps", ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"))["ShardIterator"],
            Limit=100))["Records"][-1]["SequenceNumber"]
        assert s.esm.store.checkpoints(m["UUID"]) == {"shardId-000000000000": last}


WINDOW_HANDLER = (
    "import json, os\n"
    "OUT = {out!r}\n"
    "def handler(event, context):\n"
    "    state = dict(event['state'])\n"
    "    for r in event['Records']:\n"
    "        k = r['kinesis']['partitionKey']\n"
    "        state[k] = state.get(k, 0) + 1\n"
    "    line = json.dumps({{'window': event['window'], 'in': event['state'], 'out': state,\n"
    "                       'n': len(event['Records']), 'final': event['isFinalInvokeForWindow'],\n"
    "                       'early': event['isWindowTerminatedEarly'], 'shard': event['shardId'],\n"
    "                       'arn': event['eventSourceARN']}}) + '\\n'\n"
    "    fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
    "    os.write(fd, line.encode())\n"
    "    os.close(fd)\n"
    "    return {{'state': state, 'batchItemFailures': []}}\n"
)


async def test_tumbling_window_state_accumulates_until_the_final_invoke(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "win.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        kin = _Async(client(s.daemon.url, service="kinesis"))
        await kin.create_stream(StreamName="ws", ShardCount=1)
        arn = (await kin.describe_stream(StreamName="ws"))["StreamDescription"]["StreamARN"]
        await make_fn(s.aws, "win", make_zip({"index.py": WINDOW_HANDLER.format(out=str(out))}))
        m = await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="win", StartingPosition="TRIM_HORIZON", BatchSize=1,
            TumblingWindowInSeconds=2)
        assert m["TumblingWindowInSeconds"] == 2
        keys = ["a", "b", "a", "c", "a", "b"]
        for i, key in enumerate(keys):
            await kin.put_record(StreamName="ws", Data=str(i).encode(), PartitionKey=key)

        def finals() -> list[dict[str, Any]]:
            return [x for x in lines(out) if x["final"]]

        async def all_windows_closed() -> bool:
            return sum(sum(x["in"].values()) for x in finals()) == len(keys)

        await wait_for(s.esm, all_windows_closed, 60)
        invokes = lines(out)
        assert all(x["shard"] == "shardId-000000000000" and x["arn"] == arn and not x["early"] for x in invokes)
        by_window: dict[str, list[dict[str, Any]]] = {}
        for x in invokes:
            by_window.setdefault(x["window"]["start"], []).append(x)
        assert max(len(v) for v in by_window.values()) >= 3  # some window had two or more records
        total: dict[str, int] = {}
        for ws, seq in by_window.items():
            # each invoke got the state the previous invoke of its window returned; the last one is final
            assert seq[0]["in"] == {}
            assert all(b["in"] == a["out"] for a, b in zip(seq, seq[1:], strict=False))
            assert [x["final"] for x in seq] == [False] * (len(seq) - 1) + [True]
            assert seq[-1]["n"] == 0 and all(x["n"] == 1 for x in seq[:-1])
            end = seq[0]["window"]["end"]
            assert all(x["window"] == {"start": ws, "end": end} for x in seq)
            for k, v in seq[-1]["in"].items():
                total[k] = total.get(k, 0) + v
        assert total == {"a": 3, "b": 2, "c": 1}


async def test_stream_only_fields_are_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_stack(tmp_path, monkeypatch, executor="none") as s:
        lam = s.aws.lambda_
        await make_fn(s.aws, "v", make_zip({"index.py": "def handler(e, c):\n    return 1\n"}))
        _url, q = await make_queue(s.sqs, "vq")
        for field, value in (("ParallelizationFactor", 2), ("TumblingWindowInSeconds", 60)):
            await expect_error(lam.create_event_source_mapping(EventSourceArn=q, FunctionName="v", **{field: value}),
                               400, "InvalidParameterValueException",
                               f"Unsupported {field} parameter for given event source mapping type.")
        sqs_map = await lam.create_event_source_mapping(EventSourceArn=q, FunctionName="v")
        await s.esm.wait_settled(sqs_map["UUID"])
        await expect_error(lam.update_event_source_mapping(UUID=sqs_map["UUID"], ParallelizationFactor=2), 400,
                           "InvalidParameterValueException",
                           "Unsupported ParallelizationFactor parameter for given event source mapping type.")
        kin = _Async(client(s.daemon.url, service="kinesis"))
        await kin.create_stream(StreamName="vs", ShardCount=1)
        arn = (await kin.describe_stream(StreamName="vs"))["StreamDescription"]["StreamARN"]
        # (below the minimum, botocore refuses before sending)
        for field, wire, value, limit in (("ParallelizationFactor", "parallelizationFactor", 11, 10),
                                          ("TumblingWindowInSeconds", "tumblingWindowInSeconds", 901, 900)):
            await expect_error(lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="v",
                                                               StartingPosition="LATEST", **{field: value}),
                               400, "ValidationException",
                               f"1 validation error detected: Value '{value}' at '{wire}' failed to satisfy "
                               f"constraint: Member must have value less than or equal to {limit}")
        m = await lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="v", StartingPosition="LATEST",
                                                  ParallelizationFactor=10, TumblingWindowInSeconds=900)
        assert m["ParallelizationFactor"] == 10 and m["TumblingWindowInSeconds"] == 900
        await s.esm.wait_settled(m["UUID"])
        up = await lam.update_event_source_mapping(UUID=m["UUID"], ParallelizationFactor=3, TumblingWindowInSeconds=0)
        assert up["ParallelizationFactor"] == 3 and up["TumblingWindowInSeconds"] == 0


DDB_TIMED_HANDLER = (
    "import json, os, time\n"
    "OUT = {out!r}\n"
    "def handler(event, context):\n"
    "    t0 = time.time()\n"
    "    time.sleep(0.2)\n"
    "    rows = [[r['dynamodb']['Keys']['id']['S'], r['dynamodb']['NewImage']['v']['N']] for r in event['Records']]\n"
    "    line = json.dumps({{'t0': t0, 't1': time.time(), 'rows': rows}}) + '\\n'\n"
    "    fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
    "    os.write(fd, line.encode())\n"
    "    os.close(fd)\n"
)


async def test_parallelization_factor_on_dynamodb_keeps_each_item_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ddbpar.jsonl"
    async with open_stack(tmp_path, monkeypatch) as s:
        ddb = _Async(client(s.daemon.url, service="dynamodb"))
        table = await ddb.create_table(
            TableName="pt", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"})
        arn = table["TableDescription"]["LatestStreamArn"]
        await make_fn(s.aws, "dpf", make_zip({"index.py": DDB_TIMED_HANDLER.format(out=str(out))}))
        writes = [(f"item{i % 3}", str(i)) for i in range(15)]
        for item, v in writes:
            await ddb.put_item(TableName="pt", Item={"id": {"S": item}, "v": {"N": v}})
        await s.aws.lambda_.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="dpf", StartingPosition="TRIM_HORIZON", BatchSize=1,
            ParallelizationFactor=3)

        async def all_seen() -> bool:
            return sum(len(x["rows"]) for x in lines(out)) >= len(writes)

        await wait_for(s.esm, all_seen, 60)
        calls = sorted(lines(out), key=lambda x: x["t0"])
        got = [tuple(r) for x in calls for r in x["rows"]]
        assert sorted(got) == sorted(writes)
        for item in ("item0", "item1", "item2"):
            assert [v for i, v in got if i == item] == [v for i, v in writes if i == item]
        assert any(a["t1"] > b["t0"] for a, b in zip(calls, calls[1:], strict=False))  # some overlap
