"""Resource policies, tags, reserved concurrency and function URL configs."""

from __future__ import annotations

import json

from tests.api.test_functions import expect_error
from tests.conftest import Aws, create_fn

ARN = "arn:aws:lambda:us-east-1:000000000000:function:"


async def test_permissions(aws: Aws) -> None:
    await create_fn(aws, "pol", Publish=True)
    out = await aws.lambda_.add_permission(
        FunctionName="pol", StatementId="s3", Action="lambda:InvokeFunction",
        Principal="s3.amazonaws.com", SourceArn="arn:aws:s3:::bucket", SourceAccount="000000000000",
    )
    st = json.loads(out["Statement"])
    assert st == {
        "Sid": "s3", "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "lambda:InvokeFunction", "Resource": ARN + "pol",
        "Condition": {"StringEquals": {"AWS:SourceAccount": "000000000000"},
                      "ArnLike": {"AWS:SourceArn": "arn:aws:s3:::bucket"}},
    }
    await expect_error(
        aws.lambda_.add_permission(FunctionName="pol", StatementId="s3", Action="lambda:InvokeFunction",
                                   Principal="s3.amazonaws.com"),
        409, "ResourceConflictException",
        "The statement id (s3) provided already exists. Please provide a new statement id, or remove the "
        "existing statement.",
    )
    await aws.lambda_.add_permission(FunctionName="pol", StatementId="acct", Action="lambda:InvokeFunction",
                                     Principal="123456789012")
    policy = await aws.lambda_.get_policy(FunctionName="pol")
    doc = json.loads(policy["Policy"])
    assert doc["Version"] == "2012-10-17"
    assert [s["Sid"] for s in doc["Statement"]] == ["s3", "acct"]
    assert doc["Statement"][1]["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
    # Per qualifier: version 1 has its own, empty, policy.
    await expect_error(aws.lambda_.get_policy(FunctionName="pol", Qualifier="1"), 404,
                       "ResourceNotFoundException", "The resource you requested does not exist.")
    await aws.lambda_.add_permission(FunctionName="pol", Qualifier="1", StatementId="v1",
                                     Action="lambda:InvokeFunction", Principal="*")
    v1 = json.loads((await aws.lambda_.get_policy(FunctionName="pol", Qualifier="1"))["Policy"])
    assert v1["Statement"][0]["Resource"] == ARN + "pol:1"
    await expect_error(
        aws.lambda_.add_permission(FunctionName="pol", Qualifier="$LATEST", StatementId="x",
                                   Action="lambda:InvokeFunction", Principal="*"),
        400, "InvalidParameterValueException", "We currently do not support adding policies for $LATEST.",
    )
    await expect_error(
        aws.lambda_.remove_permission(FunctionName="pol", StatementId="nope"), 404,
        "ResourceNotFoundException", "Statement nope is not found in resource policy.",
    )
    await expect_error(
        aws.lambda_.remove_permission(FunctionName="pol", StatementId="s3", RevisionId="bad"), 412,
        "PreconditionFailedException",
    )
    await aws.lambda_.remove_permission(FunctionName="pol", StatementId="s3")
    await aws.lambda_.remove_permission(FunctionName="pol", StatementId="acct")
    await expect_error(aws.lambda_.get_policy(FunctionName="pol"), 404, "ResourceNotFoundException",
                       "The resource you requested does not exist.")
    await expect_error(
        aws.lambda_.add_permission(FunctionName="pol", StatementId="example.com",
                                   Action="lambda:InvokeFunction", Principal="*"),
        400, "ValidationException",
        "1 validation error detected: Value 'example.com' at 'statementId' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: ([a-zA-Z0-9-_]+)",
    )


async def test_tags(aws: Aws) -> None:
    await create_fn(aws, "tg", Publish=True)
    arn = ARN + "tg"
    await aws.lambda_.tag_resource(Resource=arn, Tags={"a": "1", "b": "2"})
    assert (await aws.lambda_.list_tags(Resource=arn))["Tags"] == {"a": "1", "b": "2"}
    await aws.lambda_.untag_resource(Resource=arn, TagKeys=["a"])
    assert (await aws.lambda_.list_tags(Resource=arn))["Tags"] == {"b": "2"}
    await expect_error(
        aws.lambda_.tag_resource(Resource=arn + ":1", Tags={"x": "y"}), 400, "InvalidParameterValueException",
        "Tags on function aliases and versions are not supported. Please specify a function ARN.",
    )
    await expect_error(
        aws.lambda_.tag_resource(Resource=arn, Tags={f"k{i}": "v" for i in range(51)}), 400,
        "InvalidParameterValueException", "Number of tags exceeds resource tag limit.",
    )
    await expect_error(
        aws.lambda_.list_tags(Resource=ARN + "missing"), 404, "ResourceNotFoundException",
        f"Function not found: {ARN}missing",
    )


async def test_reserved_concurrency(aws: Aws) -> None:
    await create_fn(aws, "cc")
    assert "ReservedConcurrentExecutions" not in await aws.lambda_.get_function_concurrency(FunctionName="cc")
    out = await aws.lambda_.put_function_concurrency(FunctionName="cc", ReservedConcurrentExecutions=0)
    assert out["ReservedConcurrentExecutions"] == 0
    out = await aws.lambda_.put_function_concurrency(FunctionName="cc", ReservedConcurrentExecutions=5)
    assert (await aws.lambda_.get_function_concurrency(FunctionName="cc"))["ReservedConcurrentExecutions"] == 5
    assert (await aws.lambda_.get_function(FunctionName="cc"))["Concurrency"] == {"ReservedConcurrentExecutions": 5}
    await expect_error(
        aws.lambda_.put_function_concurrency(FunctionName="cc", ReservedConcurrentExecutions=901), 400,
        "InvalidParameterValueException",
        "Specified ReservedConcurrentExecutions for function decreases account's "
        "UnreservedConcurrentExecution below its minimum value of [100].",
    )
    await expect_error(
        aws.lambda_.put_function_concurrency(FunctionName="cc:1", ReservedConcurrentExecutions=1), 400,
        "InvalidParameterValueException",
        "This operation is permitted on Lambda functions only. Aliases and versions do not support this "
        "operation. Please specify either a function name or an unqualified function ARN.",
    )
    await aws.lambda_.delete_function_concurrency(FunctionName="cc")
    assert "ReservedConcurrentExecutions" not in await aws.lambda_.get_function_concurrency(FunctionName="cc")
    await expect_error(
        aws.lambda_.get_function_concurrency(FunctionName="nocc"), 404, "ResourceNotFoundException",
        f"Function not found: {ARN}nocc:$LATEST",
    )


async def test_region_pool_counts_other_reservations(aws: Aws) -> None:
    await create_fn(aws, "r1")
    await create_fn(aws, "r2")
    await aws.lambda_.put_function_concurrency(FunctionName="r1", ReservedConcurrentExecutions=800)
    await expect_error(
        aws.lambda_.put_function_concurrency(FunctionName="r2", ReservedConcurrentExecutions=101), 400,
        "InvalidParameterValueException",
    )
    ok = await aws.lambda_.put_function_concurrency(FunctionName="r2", ReservedConcurrentExecutions=100)
    assert ok["ReservedConcurrentExecutions"] == 100


async def test_function_url_configs(aws: Aws) -> None:
    await create_fn(aws, "url", Publish=True)
    await aws.lambda_.create_alias(FunctionName="url", Name="live", FunctionVersion="1")
    out = await aws.lambda_.create_function_url_config(FunctionName="url", AuthType="NONE")
    assert out["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert out["FunctionArn"] == ARN + "url"
    assert out["FunctionUrl"].startswith("http://") and ".lambda-url.us-east-1." in out["FunctionUrl"]
    assert "InvokeMode" not in out
    got = await aws.lambda_.get_function_url_config(FunctionName="url")
    assert got["InvokeMode"] == "BUFFERED" and got["FunctionUrl"] == out["FunctionUrl"]
    await expect_error(
        aws.lambda_.create_function_url_config(FunctionName="url", AuthType="NONE"), 409,
        "ResourceConflictException",
        f"Failed to create function url config for [functionArn = {ARN}url]. Error message:  "
        "FunctionUrlConfig exists for this Lambda function",
    )
    al = await aws.lambda_.create_function_url_config(FunctionName="url", Qualifier="live", AuthType="AWS_IAM",
                                                      Cors={"AllowOrigins": ["*"]})
    assert al["FunctionArn"] == ARN + "url:live" and al["FunctionUrl"] != out["FunctionUrl"]
    upd = await aws.lambda_.update_function_url_config(FunctionName="url", AuthType="AWS_IAM")
    assert upd["AuthType"] == "AWS_IAM"
    listed = await aws.lambda_.list_function_url_configs(FunctionName="url")
    assert len(listed["FunctionUrlConfigs"]) == 2
    await expect_error(
        aws.lambda_.create_function_url_config(FunctionName="url", Qualifier="1", AuthType="NONE"), 400,
        "ValidationException",
    )
    await expect_error(
        aws.lambda_.create_function_url_config(FunctionName="nourl", AuthType="NONE"), 404,
        "ResourceNotFoundException", "Function does not exist",
    )
    await expect_error(
        aws.lambda_.create_function_url_config(FunctionName="url", AuthType="NONE", InvokeMode="UNKNOWN"),
        400, "ValidationException",
        "1 validation error detected: Value 'UNKNOWN' at 'invokeMode' failed to satisfy constraint: "
        "Member must satisfy enum value set: [RESPONSE_STREAM, BUFFERED]",
    )
    await aws.lambda_.delete_function_url_config(FunctionName="url")
    await expect_error(aws.lambda_.get_function_url_config(FunctionName="url"), 404,
                       "ResourceNotFoundException", "The resource you requested does not exist.")
