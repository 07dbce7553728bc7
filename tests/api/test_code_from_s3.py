"""Code from S3 and its reactive sync (the seed's "Hot-Reloading via Reactive S3 Sync")."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from flocid.daemon import Daemon, run_daemon
from tests.api.test_functions import expect_error
from tests.conftest import ROLE, Aws, _Async, client, make_zip, settings_for


def app(tag: str) -> bytes:
    return make_zip({"index.py": f"def handler(event, context):\n    return '{tag}'\n"})


@pytest.fixture
async def env(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[Aws, Any]]:
    d: Daemon = await nursery.start(run_daemon, settings_for(tmp_path, executor="process"))
    aws = Aws(d.url)
    s3 = _Async(client(d.url, service="s3"))
    await s3.create_bucket(Bucket="code")
    yield aws, s3
    d.stop()


async def invoke(aws: Aws, name: str, **kw: Any) -> Any:
    out = await aws.lambda_.invoke(FunctionName=name, Payload=b"{}", **kw)
    return json.loads(out["Payload"].read())


async def test_four_step_reactive_sync(env: tuple[Aws, Any]) -> None:
    aws, s3 = env
    # 1. the code in S3, the function created from it
    await s3.put_object(Bucket="code", Key="fn.zip", Body=app("v1"))
    created = await aws.lambda_.create_function(
        FunctionName="s3fn", Runtime="python3.13", Role=ROLE, Handler="index.handler",
        Code={"S3Bucket": "code", "S3Key": "fn.zip"}, Publish=True)
    # 2. invoke
    assert await invoke(aws, "s3fn") == "v1"
    # 3. a new zip uploaded to the same key
    await s3.put_object(Bucket="code", Key="fn.zip", Body=app("v2"))
    # 4. the very next invoke runs it: no poll, no restart
    assert await invoke(aws, "s3fn") == "v2"
    cfg = await aws.lambda_.get_function_configuration(FunctionName="s3fn")
    assert cfg["CodeSha256"] != created["CodeSha256"] and cfg["RevisionId"] != created["RevisionId"]
    # A published version keeps its frozen code.
    assert await invoke(aws, "s3fn", Qualifier="1") == "v1"
    # CopyObject onto the key counts as a change too.
    await s3.put_object(Bucket="code", Key="other.zip", Body=app("v3"))
    await s3.copy_object(Bucket="code", Key="fn.zip", CopySource={"Bucket": "code", "Key": "other.zip"})
    assert await invoke(aws, "s3fn") == "v3"
    # UpdateFunctionCode with a zip breaks the link.
    await aws.lambda_.update_function_code(FunctionName="s3fn", ZipFile=app("zip"))
    await s3.put_object(Bucket="code", Key="fn.zip", Body=app("v4"))
    assert await invoke(aws, "s3fn") == "zip"


async def test_a_bad_upload_keeps_the_old_code(env: tuple[Aws, Any]) -> None:
    aws, s3 = env
    await s3.put_object(Bucket="code", Key="k.zip", Body=app("good"))
    await aws.lambda_.create_function(FunctionName="keep", Runtime="python3.13", Role=ROLE,
                                      Handler="index.handler", Code={"S3Bucket": "code", "S3Key": "k.zip"})
    await s3.put_object(Bucket="code", Key="k.zip", Body=b"not a zip")
    assert await invoke(aws, "keep") == "good"


async def test_missing_object_gets_the_s3_error(env: tuple[Aws, Any]) -> None:
    aws, _s3 = env
    await expect_error(
        aws.lambda_.create_function(FunctionName="x", Runtime="python3.13", Role=ROLE, Handler="index.handler",
                                    Code={"S3Bucket": "code", "S3Key": "missing.zip"}),
        400, "InvalidParameterValueException",
        "Error occurred while GetObject. S3 Error Code: NoSuchKey. S3 Error Message: The specified key does not exist.",
    )
    await expect_error(
        aws.lambda_.create_function(FunctionName="x", Runtime="python3.13", Role=ROLE, Handler="index.handler",
                                    Code={"S3Bucket": "nobucket", "S3Key": "k"}),
        400, "InvalidParameterValueException",
        "Error occurred while GetObject. S3 Error Code: NoSuchBucket. S3 Error Message: The specified bucket does not exist",
    )
