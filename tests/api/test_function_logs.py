"""Each invocation's output in CloudWatch Logs: /aws/lambda/<fn>, a stream per environment."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from flocid.daemon import Daemon, run_daemon
from tests.conftest import ROLE, Aws, _Async, client, make_zip, settings_for


@pytest.fixture
async def env(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[Daemon, Aws, Any]]:
    d: Daemon = await nursery.start(run_daemon, settings_for(tmp_path, executor="process"))
    yield d, Aws(d.url), _Async(client(d.url, service="logs"))
    d.stop()


async def test_invocation_logs_reach_cloudwatch(env: tuple[Daemon, Aws, Any]) -> None:
    d, aws, logs = env
    code = make_zip({"index.py": (
        "def handler(event, context):\n"
        "    print('hello', event.get('n'))\n"
        "    for i in range(event.get('burst', 0)):\n"
        "        print('line', i)\n"
        "    return 1\n")})
    await aws.lambda_.create_function(FunctionName="lg", Runtime="python3.13", Role=ROLE,
                                      Handler="index.handler", Code={"ZipFile": code})
    r1 = await aws.lambda_.invoke(FunctionName="lg", Payload=b'{"n": 1}')
    r2 = await aws.lambda_.invoke(FunctionName="lg", Payload=b'{"n": 2, "burst": 2000}')
    with trio.fail_after(10):
        while d.invoker.statistics().in_flight:
            await trio.testing.wait_all_tasks_blocked(0.01)
        await trio.testing.wait_all_tasks_blocked(0.05)
        await d.invoker._log_sink.flush()
    streams = (await logs.describe_log_streams(logGroupName="/aws/lambda/lg"))["logStreams"]
    assert len(streams) == 1, "one warm environment, one stream"
    name = streams[0]["logStreamName"]
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", name), name
    events = (await logs.get_log_events(logGroupName="/aws/lambda/lg", logStreamName=name,
                                        startFromHead=True, limit=10000))["events"]
    messages = [e["message"] for e in events]
    rid1 = r1["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    rid2 = r2["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    first = messages.index(f"START RequestId: {rid1} Version: $LATEST")
    assert messages[first + 1] == "hello 1"
    assert messages[first + 2] == f"END RequestId: {rid1}"
    assert messages[first + 3].startswith(f"REPORT RequestId: {rid1}\tDuration: ")
    assert "Init Duration" in messages[first + 3]
    assert f"START RequestId: {rid2} Version: $LATEST" in messages
    assert [m for m in messages if m.startswith("line ")] == [f"line {i}" for i in range(2000)], "no line lost"
    found = await logs.filter_log_events(logGroupName="/aws/lambda/lg", filterPattern="hello")
    assert sorted(e["message"] for e in found["events"]) == ["hello 1", "hello 2"]
