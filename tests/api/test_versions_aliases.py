"""Versions and aliases: publish dedupe, preconditions, routing config validation."""

from __future__ import annotations

from tests.api.test_functions import expect_error
from tests.conftest import Aws, create_fn, make_zip

ARN = "arn:aws:lambda:us-east-1:000000000000:function:"


async def test_publish_version_dedupes_when_nothing_changed(aws: Aws) -> None:
    await create_fn(aws, "pv")
    v1 = await aws.lambda_.publish_version(FunctionName="pv")
    assert v1["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert v1["Version"] == "1" and v1["FunctionArn"] == ARN + "pv:1"
    again = await aws.lambda_.publish_version(FunctionName="pv")
    assert again["Version"] == "1" and again["RevisionId"] == v1["RevisionId"]
    await aws.lambda_.update_function_configuration(FunctionName="pv", Timeout=9)
    v2 = await aws.lambda_.publish_version(FunctionName="pv", Description="second")
    assert v2["Version"] == "2" and v2["Description"] == "second" and v2["Timeout"] == 9
    versions = await aws.lambda_.list_versions_by_function(FunctionName="pv")
    assert [v["Version"] for v in versions["Versions"]] == ["$LATEST", "1", "2"]


async def test_version_numbers_are_never_reused(aws: Aws) -> None:
    await create_fn(aws, "nr", Publish=True)
    await aws.lambda_.delete_function(FunctionName="nr", Qualifier="1")
    await aws.lambda_.update_function_configuration(FunctionName="nr", Timeout=5)
    v = await aws.lambda_.publish_version(FunctionName="nr")
    assert v["Version"] == "2"


async def test_publish_on_create_answers_version_with_unqualified_arn(aws: Aws) -> None:
    out = await create_fn(aws, "pc", Publish=True)
    assert out["Version"] == "1"
    assert out["FunctionArn"] == ARN + "pc"


async def test_published_version_keeps_its_code(aws: Aws) -> None:
    created = await create_fn(aws, "frozen", Publish=True)
    await aws.lambda_.update_function_code(
        FunctionName="frozen", ZipFile=make_zip({"index.py": "def handler(e, c): return 'new'\n"}))
    v1 = await aws.lambda_.get_function_configuration(FunctionName="frozen", Qualifier="1")
    latest = await aws.lambda_.get_function_configuration(FunctionName="frozen")
    assert v1["CodeSha256"] == created["CodeSha256"] != latest["CodeSha256"]


async def test_publish_preconditions(aws: Aws) -> None:
    created = await create_fn(aws, "pp")
    await expect_error(
        aws.lambda_.publish_version(FunctionName="pp", CodeSha256="somenonexistentsha256"), 400,
        "InvalidParameterValueException",
        "CodeSHA256 (somenonexistentsha256) is different from current CodeSHA256 in $LATEST "
        f"({created['CodeSha256']}). Please try again with the CodeSHA256 in $LATEST.",
    )
    await expect_error(
        aws.lambda_.publish_version(FunctionName="pp", RevisionId="wrong"), 412, "PreconditionFailedException",
        "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/GetAlias API "
        "to retrieve the latest Revision Id",
    )
    ok = await aws.lambda_.publish_version(FunctionName="pp", RevisionId=created["RevisionId"],
                                           CodeSha256=created["CodeSha256"])
    assert ok["Version"] == "1"


async def test_alias_lifecycle(aws: Aws) -> None:
    await create_fn(aws, "al", Publish=True)
    await aws.lambda_.update_function_configuration(FunctionName="al", Timeout=7)
    await aws.lambda_.publish_version(FunctionName="al")
    a = await aws.lambda_.create_alias(FunctionName="al", Name="live", FunctionVersion="1",
                                       Description="d", RoutingConfig={"AdditionalVersionWeights": {"2": 0.25}})
    assert a["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert a["AliasArn"] == ARN + "al:live"
    assert a["RoutingConfig"] == {"AdditionalVersionWeights": {"2": 0.25}}
    got = await aws.lambda_.get_alias(FunctionName="al", Name="live")
    assert got["FunctionVersion"] == "1" and got["RevisionId"] == a["RevisionId"]
    upd = await aws.lambda_.update_alias(FunctionName="al", Name="live", FunctionVersion="2",
                                         RoutingConfig={"AdditionalVersionWeights": {}})
    assert upd["FunctionVersion"] == "2" and "RoutingConfig" not in upd
    await aws.lambda_.create_alias(FunctionName="al", Name="dev", FunctionVersion="$LATEST")
    listed = await aws.lambda_.list_aliases(FunctionName="al")
    assert [x["Name"] for x in listed["Aliases"]] == ["dev", "live"]
    only2 = await aws.lambda_.list_aliases(FunctionName="al", FunctionVersion="2")
    assert [x["Name"] for x in only2["Aliases"]] == ["live"]
    cfg = await aws.lambda_.get_function_configuration(FunctionName="al", Qualifier="live")
    assert cfg["Version"] == "2" and cfg["FunctionArn"] == ARN + "al:live"
    await aws.lambda_.delete_alias(FunctionName="al", Name="live")
    await aws.lambda_.delete_alias(FunctionName="al", Name="live")  # idempotent 204
    await expect_error(
        aws.lambda_.get_alias(FunctionName="al", Name="live"), 404, "ResourceNotFoundException",
        f"Cannot find alias arn: {ARN}al:live",
    )


async def test_alias_errors(aws: Aws) -> None:
    await create_fn(aws, "ae", Publish=True)
    await aws.lambda_.create_alias(FunctionName="ae", Name="custom", FunctionVersion="1")
    await expect_error(
        aws.lambda_.create_alias(FunctionName="ae", Name="custom", FunctionVersion="1"), 409,
        "ResourceConflictException", f"Alias already exists: {ARN}ae:custom",
    )
    await expect_error(
        aws.lambda_.create_alias(FunctionName="ae", Name="x", FunctionVersion="7"), 404,
        "ResourceNotFoundException", f"Function not found: {ARN}ae:7",
    )
    await expect_error(
        aws.lambda_.create_alias(FunctionName="ae", Name="x", FunctionVersion="1",
                                 RoutingConfig={"AdditionalVersionWeights": {"1": 0.5}}),
        400, "InvalidParameterValueException",
        "Invalid function version 1. Function version 1 is already included in routing configuration.",
    )
    await expect_error(
        aws.lambda_.create_alias(FunctionName="ae", Name="x", FunctionVersion="$LATEST",
                                 RoutingConfig={"AdditionalVersionWeights": {"1": 0.5}}),
        400, "InvalidParameterValueException",
        "$LATEST is not supported for an alias pointing to more than 1 version",
    )
    await expect_error(
        aws.lambda_.create_alias(FunctionName="ae", Name="x", FunctionVersion="1",
                                 RoutingConfig={"AdditionalVersionWeights": {"2": 2.0}}),
        400, "ValidationException",
    )
    await expect_error(
        aws.lambda_.create_alias(FunctionName="ae", Name="123", FunctionVersion="1"), 400,
        "ValidationException",
    )
    await expect_error(
        aws.lambda_.update_alias(FunctionName="ae", Name="missing", FunctionVersion="1"), 404,
        "ResourceNotFoundException", f"Alias not found: {ARN}ae:missing",
    )
    await expect_error(
        aws.lambda_.delete_function(FunctionName="ae", Qualifier="1"), 409, "ResourceConflictException",
    )
