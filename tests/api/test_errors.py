"""Bad input gets AWS's status, code and message; nothing gets a 500 or a traceback.

Some checks go below boto3 (raw HTTP) to see the wire: the error body's key casing and the
``X-Amzn-ErrorType`` header, and inputs boto3 would refuse to send.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import zipfile
from typing import Any

import trio

from flocid.daemon import Daemon
from tests.api.test_functions import expect_error
from tests.conftest import ROLE, Aws, create_fn, make_zip


async def raw(daemon: Daemon, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    def go() -> tuple[int, dict[str, str], Any]:
        req = urllib.request.Request(daemon.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req) as resp:
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(data) if data else None
        except urllib.error.HTTPError as err:
            data = err.read()
            return err.code, {k.lower(): v for k, v in err.headers.items()}, json.loads(data) if data else None

    return await trio.to_thread.run_sync(go)


async def test_not_found_body_uses_capital_message(daemon: Daemon) -> None:
    status, headers, body = await raw(daemon, "GET", "/2015-03-31/functions/missing")
    assert status == 404
    assert headers["x-amzn-errortype"] == "ResourceNotFoundException"
    assert body == {"Type": "User",
                    "Message": "Function not found: arn:aws:lambda:us-east-1:000000000000:function:missing"}


async def test_other_errors_use_lowercase_message(daemon: Daemon) -> None:
    status, headers, body = await raw(daemon, "POST", "/2015-03-31/functions", b"{not json")
    assert status == 400
    assert headers["x-amzn-errortype"] == "InvalidRequestContentException"
    assert body["Type"] == "User" and body["message"].startswith("Could not parse request body into json")


async def test_unknown_field_is_refused(daemon: Daemon) -> None:
    body = json.dumps({"FunctionName": "x", "Role": ROLE, "Code": {}, "Bogus": 1}).encode()
    status, headers, out = await raw(daemon, "POST", "/2015-03-31/functions", body)
    assert status == 400 and headers["x-amzn-errortype"] == "InvalidRequestContentException"
    assert 'Unrecognized field "Bogus"' in out["message"]


async def test_wrong_type_is_refused(daemon: Daemon) -> None:
    body = json.dumps({"FunctionName": "x", "Role": ROLE, "Code": {}, "Timeout": "ten"}).encode()
    status, headers, _ = await raw(daemon, "POST", "/2015-03-31/functions", body)
    assert status == 400 and headers["x-amzn-errortype"] == "InvalidRequestContentException"


async def test_unknown_route(daemon: Daemon) -> None:
    auth = ("AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/lambda/aws4_request, "
            "SignedHeaders=host, Signature=0")
    status, headers, _ = await raw(daemon, "GET", "/2099-01-01/whatever", headers={"Authorization": auth})
    assert status == 404 and headers["x-amzn-errortype"] == "UnknownOperationException"


async def test_name_too_long(aws: Aws) -> None:
    name = "a" * 65
    await expect_error(
        create_fn(aws, name), 400, "InvalidParameterValueException",
        f"1 validation error detected: Value '{name}' at 'functionName' failed to satisfy constraint: "
        "Member must have length less than or equal to 64",
    )


async def test_bad_name_pattern(aws: Aws) -> None:
    await expect_error(create_fn(aws, "bad name!"), 400, "ValidationException")


async def test_arn_from_other_region_and_account(aws: Aws) -> None:
    await create_fn(aws, "reg")
    await expect_error(
        aws.lambda_.get_function(FunctionName="arn:aws:lambda:eu-west-1:000000000000:function:reg"), 404,
        "ResourceNotFoundException",
        "Functions from 'eu-west-1' are not reachable in this region ('us-east-1')",
    )
    await expect_error(
        aws.lambda_.get_function(FunctionName="arn:aws:lambda:us-east-1:111111111111:function:reg"), 403,
        "AccessDeniedException",
    )


async def test_qualifier_mismatch(aws: Aws) -> None:
    await create_fn(aws, "qm", Publish=True)
    await expect_error(
        aws.lambda_.get_function(FunctionName="qm:1", Qualifier="2"), 400, "InvalidParameterValueException",
        "The derived qualifier from the function name does not match the specified qualifier.",
    )


async def test_bad_runtime_and_deprecated_runtime(aws: Aws) -> None:
    err = await expect_error(create_fn(aws, "rt", Runtime="non-existent-runtime"), 400,
                             "InvalidParameterValueException")
    assert err.response["Error"]["Message"].startswith(
        "Value non-existent-runtime at 'runtime' failed to satisfy constraint: Member must satisfy enum value set: ["
    )
    await expect_error(
        create_fn(aws, "rt", Runtime="python3.7"), 400, "InvalidParameterValueException",
        "The runtime parameter of python3.7 is no longer supported for creating or updating AWS Lambda "
        "functions. We recommend you use a supported runtime while creating or updating functions.",
    )


async def test_memory_and_timeout_bounds(aws: Aws) -> None:
    for kw in ({"MemorySize": 64}, {"MemorySize": 10241}, {"Timeout": 0}, {"Timeout": 901}):
        err = await expect_error(create_fn(aws, "mt", **kw), 400, "ValidationException")
        assert "failed to satisfy constraint" in err.response["Error"]["Message"]
    await create_fn(aws, "mt", MemorySize=10240, Timeout=900)


async def test_environment_over_4kb(aws: Aws) -> None:
    err = await expect_error(
        create_fn(aws, "env", Environment={"Variables": {"BIG": "x" * 4100}}), 400,
        "InvalidParameterValueException",
    )
    assert err.response["Error"]["Message"].startswith(
        "Lambda was unable to configure your environment variables because the environment variables you "
        "have provided exceeded the 4KB limit. String measured: "
    )


async def test_unreadable_zip(aws: Aws) -> None:
    await expect_error(
        create_fn(aws, "badzip", Code={"ZipFile": b"this is not a zip"}), 400, "InvalidParameterValueException",
        "Could not unzip uploaded file. Please check your file, then try to upload again.",
    )
    await expect_error(aws.lambda_.get_function(FunctionName="badzip"), 404, "ResourceNotFoundException")


async def test_zip_escaping_its_directory_is_refused(aws: Aws, daemon: Daemon) -> None:
    evil = make_zip({"../../escape.py": "x = 1\n", "index.py": "def handler(e, c): pass\n"})
    await expect_error(create_fn(aws, "evil", Code={"ZipFile": evil}), 400, "InvalidParameterValueException")
    await expect_error(aws.lambda_.get_function(FunctionName="evil"), 404, "ResourceNotFoundException")
    data_dir = daemon.settings.data_dir
    assert not any(p.name == "escape.py" for p in data_dir.parent.rglob("escape.py"))


async def test_zip_bomb_is_refused(aws: Aws) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"zero{i}.bin", b"\0" * (100 * 1024 * 1024))
    bomb = buf.getvalue()
    assert len(bomb) < 2 * 1024 * 1024
    await expect_error(
        create_fn(aws, "bomb", Code={"ZipFile": bomb}), 400, "InvalidParameterValueException",
        "Unzipped size must be smaller than 262144000 bytes",
    )


async def test_zip_over_50mb_is_413(aws: Aws) -> None:
    import os

    big = make_zip({"index.py": "x=1\n", "blob.bin": os.urandom(50 * 1024 * 1024 + 10)})
    await expect_error(
        create_fn(aws, "big", Code={"ZipFile": big}), 413, "RequestEntityTooLargeException",
        "Zipped size must be smaller than 52428800 bytes",
    )


async def test_invalid_role(aws: Aws) -> None:
    await expect_error(create_fn(aws, "role", Role="not-a-role"), 400, "ValidationException")


async def test_too_many_layers(aws: Aws) -> None:
    layers = [f"arn:aws:lambda:us-east-1:000000000000:layer:l{i}:1" for i in range(6)]
    await expect_error(create_fn(aws, "ly", Layers=layers), 400, "InvalidParameterValueException",
                       "Cannot reference more than 5 layers.")


async def test_several_bad_fields_are_reported_together(aws: Aws) -> None:
    err = await expect_error(create_fn(aws, "multi", MemorySize=64, Timeout=0), 400, "ValidationException")
    msg = err.response["Error"]["Message"]
    assert msg.startswith("2 validation errors detected: "), msg
    assert "'memorySize'" in msg and "'timeout'" in msg


async def test_bad_handler(aws: Aws) -> None:
    err = await expect_error(create_fn(aws, "hd", Handler="has space"), 400, "ValidationException")
    assert "'handler'" in err.response["Error"]["Message"]


async def test_missing_required_member(daemon: Daemon) -> None:
    body = json.dumps({"FunctionName": "x", "Code": {}}).encode()
    status, headers, out = await raw(daemon, "POST", "/2015-03-31/functions", body)
    assert status == 400 and headers["x-amzn-errortype"] == "ValidationException"
    assert out["message"] == ("1 validation error detected: Value null at 'role' failed to satisfy constraint: "
                              "Member must not be null")
