"""The function API through boto3 against an in-process daemon: shapes, defaults, status codes."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import PY_HANDLER, ROLE, Aws, create_fn, make_zip


async def expect_error(call: Any, status: int, code: str, message: str | None = None) -> ClientError:
    with pytest.raises(ClientError) as info:
        await call
    err = info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == status, err
    assert err["Error"]["Code"] == code, err
    if message is not None:
        assert err["Error"]["Message"] == message, err
    return info.value


async def test_create_function_defaults(aws: Aws) -> None:
    out = await create_fn(aws, "f1")
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert out["FunctionName"] == "f1"
    assert out["FunctionArn"] == "arn:aws:lambda:us-east-1:000000000000:function:f1"
    assert out["State"] == "Active"
    assert out["Timeout"] == 3 and out["MemorySize"] == 128
    assert out["EphemeralStorage"] == {"Size": 512}
    assert out["Architectures"] == ["x86_64"]
    assert out["TracingConfig"] == {"Mode": "PassThrough"}
    assert out["PackageType"] == "Zip"
    assert out["Version"] == "$LATEST"
    assert out["LoggingConfig"] == {"LogFormat": "Text", "LogGroup": "/aws/lambda/f1"}
    assert out["CodeSha256"] == base64.b64encode(hashlib.sha256(PY_HANDLER).digest()).decode()
    assert out["CodeSize"] == len(PY_HANDLER)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000", out["LastModified"])
    assert out["LastUpdateStatus"] == "Successful"
    assert out["Environment"] == {"Variables": {}}
    assert re.fullmatch(r"[0-9a-f-]{36}", out["RevisionId"])


async def test_get_function_and_configuration(aws: Aws) -> None:
    await create_fn(aws, "f2", Timeout=30, MemorySize=256, Tags={"team": "a"},
                    Environment={"Variables": {"KEY": "v"}})
    got = await aws.lambda_.get_function(FunctionName="f2")
    assert got["Configuration"]["Timeout"] == 30
    assert got["Configuration"]["Role"] == ROLE
    assert got["Code"]["RepositoryType"] == "S3"
    assert got["Tags"] == {"team": "a"}
    cfg = await aws.lambda_.get_function_configuration(FunctionName="f2")
    assert cfg["MemorySize"] == 256
    assert cfg["Environment"] == {"Variables": {"KEY": "v"}}
    # The Code.Location really serves the zip.
    import urllib.request

    import trio

    data = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(got["Code"]["Location"]).read())
    assert data == PY_HANDLER


async def test_get_function_by_arn_and_partial_arn(aws: Aws) -> None:
    await create_fn(aws, "f3")
    arn = "arn:aws:lambda:us-east-1:000000000000:function:f3"
    assert (await aws.lambda_.get_function(FunctionName=arn))["Configuration"]["FunctionName"] == "f3"
    partial = "000000000000:function:f3"
    assert (await aws.lambda_.get_function(FunctionName=partial))["Configuration"]["FunctionArn"] == arn


async def test_duplicate_create_is_409(aws: Aws) -> None:
    await create_fn(aws, "dup")
    await expect_error(create_fn(aws, "dup"), 409, "ResourceConflictException", "Function already exist: dup")


async def test_get_missing_function_is_404(aws: Aws) -> None:
    await expect_error(
        aws.lambda_.get_function(FunctionName="nope"), 404, "ResourceNotFoundException",
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope",
    )
    await expect_error(
        aws.lambda_.get_function(FunctionName="nope", Qualifier="1221"), 404, "ResourceNotFoundException",
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope:1221",
    )


async def test_missing_version_is_404_with_qualifier(aws: Aws) -> None:
    await create_fn(aws, "fv")
    await expect_error(
        aws.lambda_.get_function_configuration(FunctionName="fv", Qualifier="1221"), 404,
        "ResourceNotFoundException",
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:fv:1221",
    )


async def test_list_functions_paging_and_all_versions(aws: Aws) -> None:
    for i in range(5):
        await create_fn(aws, f"lf{i}")
    await aws.lambda_.publish_version(FunctionName="lf0")
    first = await aws.lambda_.list_functions(MaxItems=2)
    assert [f["FunctionName"] for f in first["Functions"]] == ["lf0", "lf1"]
    names = [f["FunctionName"] for f in first["Functions"]]
    marker = first["NextMarker"]
    while marker:
        page = await aws.lambda_.list_functions(MaxItems=2, Marker=marker)
        names += [f["FunctionName"] for f in page["Functions"]]
        marker = page.get("NextMarker")
    assert names == [f"lf{i}" for i in range(5)]
    everything = await aws.lambda_.list_functions(FunctionVersion="ALL")
    assert [(f["FunctionName"], f["Version"]) for f in everything["Functions"]][:2] == [
        ("lf0", "$LATEST"), ("lf0", "1")
    ]
    await expect_error(aws.lambda_.list_functions(FunctionVersion="SOME"), 400, "ValidationException")


async def test_list_functions_is_per_region(aws: Aws) -> None:
    await create_fn(aws, "east")
    west = aws.for_region("eu-west-1")
    assert (await west.lambda_.list_functions())["Functions"] == []
    await create_fn(west, "east")  # same name, other region: no conflict
    out = await west.lambda_.get_function(FunctionName="east")
    assert out["Configuration"]["FunctionArn"].startswith("arn:aws:lambda:eu-west-1:")


async def test_update_function_configuration(aws: Aws) -> None:
    created = await create_fn(aws, "uc")
    out = await aws.lambda_.update_function_configuration(
        FunctionName="uc", Timeout=60, MemorySize=1024, Description="d",
        Environment={"Variables": {"AA": "1"}}, TracingConfig={"Mode": "Active"},
        EphemeralStorage={"Size": 1024}, Handler="index.other", Runtime="python3.12",
        Role="arn:aws:iam::000000000000:role/other",
    )
    assert out["Timeout"] == 60 and out["MemorySize"] == 1024 and out["Description"] == "d"
    assert out["TracingConfig"] == {"Mode": "Active"} and out["EphemeralStorage"] == {"Size": 1024}
    assert out["Handler"] == "index.other" and out["Runtime"] == "python3.12"
    assert out["RevisionId"] != created["RevisionId"]
    cfg = await aws.lambda_.get_function_configuration(FunctionName="uc")
    assert cfg["Environment"] == {"Variables": {"AA": "1"}}
    cleared = await aws.lambda_.update_function_configuration(FunctionName="uc", Environment={"Variables": {}})
    assert cleared["Environment"] == {"Variables": {}}


async def test_update_configuration_revision_precondition(aws: Aws) -> None:
    await create_fn(aws, "rev")
    await expect_error(
        aws.lambda_.update_function_configuration(
            FunctionName="rev", Timeout=10, RevisionId="00000000-0000-0000-0000-000000000000"),
        412, "PreconditionFailedException",
    )
    assert (await aws.lambda_.get_function_configuration(FunctionName="rev"))["Timeout"] == 3


async def test_update_function_code_changes_sha(aws: Aws) -> None:
    created = await create_fn(aws, "code")
    newzip = make_zip({"index.py": "def handler(e, c):\n    return 2\n"})
    out = await aws.lambda_.update_function_code(FunctionName="code", ZipFile=newzip)
    assert out["CodeSha256"] == base64.b64encode(hashlib.sha256(newzip).digest()).decode()
    assert out["CodeSha256"] != created["CodeSha256"]
    assert out["RevisionId"] != created["RevisionId"]


async def test_delete_function(aws: Aws) -> None:
    await create_fn(aws, "del")
    out = await aws.lambda_.delete_function(FunctionName="del")
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 204
    await expect_error(aws.lambda_.get_function(FunctionName="del"), 404, "ResourceNotFoundException")
    await expect_error(aws.lambda_.delete_function(FunctionName="del"), 404, "ResourceNotFoundException",
                       "Function not found: arn:aws:lambda:us-east-1:000000000000:function:del")


async def test_delete_one_version(aws: Aws) -> None:
    await create_fn(aws, "dv", Publish=True)
    await expect_error(
        aws.lambda_.delete_function(FunctionName="dv", Qualifier="$LATEST"), 400,
        "InvalidParameterValueException", "$LATEST version cannot be deleted without deleting the function.",
    )
    await aws.lambda_.delete_function(FunctionName="dv", Qualifier="1")
    await expect_error(aws.lambda_.get_function(FunctionName="dv", Qualifier="1"), 404,
                       "ResourceNotFoundException")
    assert (await aws.lambda_.get_function(FunctionName="dv"))["Configuration"]["Version"] == "$LATEST"


async def test_image_function_config(aws: Aws) -> None:
    out = await aws.lambda_.create_function(
        FunctionName="img", Role=ROLE, PackageType="Image",
        Code={"ImageUri": "000000000000.dkr.ecr.us-east-1.amazonaws.com/fake-repo:latest"},
        ImageConfig={"WorkingDirectory": "/app", "Command": ["app.handler"]},
    )
    assert out["PackageType"] == "Image"
    assert out["ImageConfigResponse"]["ImageConfig"]["WorkingDirectory"] == "/app"
    assert "Runtime" not in out and "Handler" not in out
    upd = await aws.lambda_.update_function_configuration(
        FunctionName="img", ImageConfig={"WorkingDirectory": "/updated"})
    assert upd["ImageConfigResponse"]["ImageConfig"]["WorkingDirectory"] == "/updated"
    got = await aws.lambda_.get_function(FunctionName="img")
    assert got["Code"]["RepositoryType"] == "ECR"


async def test_create_with_arm64_tracing_and_storage(aws: Aws) -> None:
    out = await create_fn(aws, "arm", Architectures=["arm64"], EphemeralStorage={"Size": 2048},
                          TracingConfig={"Mode": "Active"})
    assert out["Architectures"] == ["arm64"]
    assert out["EphemeralStorage"] == {"Size": 2048}
    assert out["TracingConfig"] == {"Mode": "Active"}


async def test_code_signing_config_is_empty(aws: Aws) -> None:
    await create_fn(aws, "csc")
    out = await aws.lambda_.get_function_code_signing_config(FunctionName="csc")
    assert out["CodeSigningConfigArn"] == "" and out["FunctionName"] == "csc"
