"""Field validation against AWS's recorded messages (aws-recorded-errors.txt, peers.md 1.10)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from flocid.lambda_ import validation as v
from flocid.lambda_.errors import (
    InvalidParameterValue,
    InvalidRequestContent,
    LambdaError,
    ValidationError,
)

R = "us-east-1"
A = "111111111111"
RUNTIMES = (
    "[nodejs20.x, python3.14, provided.al2023, python3.12, python3.13, nodejs24.x, nodejs22.x, java25, "
    "python3.10, python3.11, java21, ruby3.3, ruby3.4, ruby3.2, python3.8, python3.9, java17, nodejs16.x, "
    "dotnet10, dotnet8, java11, dotnet6, nodejs18.x, provided.al2, java8.al2]"
)


def raises(cls: type[LambdaError], fn: Callable[..., None], *args: Any, **kw: Any) -> str:
    with pytest.raises(cls) as e:
        fn(*args, **kw)
    assert type(e.value) is cls
    assert e.value.message is not None
    return e.value.message


def one(field: str, value: str, constraint: str) -> str:
    return f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: {constraint}"


# ------------------------------------------------------------------ collector


def test_violations_join_and_count() -> None:
    col = v.Violations()
    assert not col
    col.add("a", "x", "c1")
    col.add("b", None, "c2")
    col.add("c", [1, "y"], "c3")
    col.add("d", {"2": 2.0}, "c4")
    col.add("e", "secret", "c5", sensitive=True)
    assert len(col) == 5
    assert col.message() == (
        "5 validation errors detected: Value 'x' at 'a' failed to satisfy constraint: c1; "
        "Value null at 'b' failed to satisfy constraint: c2; "
        "Value '[1, y]' at 'c' failed to satisfy constraint: c3; "
        "Value '{2=2.0}' at 'd' failed to satisfy constraint: c4; "
        "Value at 'e' failed to satisfy constraint: c5"
    )
    with pytest.raises(ValidationError):
        col.raise_if_any()


def test_collect_over_fields_then_deferred() -> None:
    col = v.Violations()
    v.validate_timeout(0, col)
    v.validate_memory_size(20000, col)
    v.validate_runtime("python3.7", creating=True, violations=col)
    with pytest.raises(ValidationError) as e:
        col.raise_if_any()
    assert e.value.message is not None
    assert e.value.message.startswith("2 validation errors detected: Value '0' at 'timeout'")
    # Model constraints first; the service rule only when they all pass.
    col = v.Violations()
    v.validate_timeout(3, col)
    v.validate_runtime("python3.7", creating=True, violations=col)
    assert len(col) == 0 and col
    with pytest.raises(InvalidParameterValue):
        col.raise_if_any()


def test_java_str() -> None:
    assert v.java_str(1e-05) == "1.0E-5"
    assert v.java_str(-1.0) == "-1.0"
    assert v.java_str(0.5) == "0.5"
    assert v.java_str(True) == "true"


# ------------------------------------------------------------------ runtime


def test_runtime_unknown_and_uppercase() -> None:
    # test_create_lambda_exceptions /invalid_runtime_exc, /uppercase_runtime_exc
    for bad in ("non-existent-runtime", "PYTHON3.9"):
        msg = raises(InvalidParameterValue, v.validate_runtime, bad, creating=True)
        assert msg == (
            f"Value {bad} at 'runtime' failed to satisfy constraint: Member must satisfy enum value set: "
            f"{RUNTIMES} or be a valid ARN"
        )


@pytest.mark.parametrize(
    "runtime",
    ["java8", "go1.x", "provided", "ruby2.7", "nodejs14.x", "python3.7", "dotnetcore3.1", "nodejs12.x"],
)
def test_runtime_deprecated(runtime: str) -> None:
    msg = raises(InvalidParameterValue, v.validate_runtime, runtime, creating=True)
    assert msg == (
        f"The runtime parameter of {runtime} is no longer supported for creating or updating AWS Lambda "
        "functions. We recommend you use a supported runtime while creating or updating functions."
    )
    v.validate_runtime(runtime, creating=False)


def test_runtime_valid() -> None:
    for r in ("python3.12", "provided.al2023", "nodejs20.x", "java8.al2"):
        v.validate_runtime(r, creating=True)


# ------------------------------------------------------------------ configuration


def test_role() -> None:
    # /invalid_role_arn_exc
    assert raises(ValidationError, v.validate_role, "r1") == one(
        "role", "r1",
        r"Member must satisfy regular expression pattern: arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?"
        r"[a-zA-Z_0-9+=,.@\-_/]+",
    )
    v.validate_role("arn:aws:iam::123456789012:role/service-role/lambda_basic")


def test_handler() -> None:
    assert raises(ValidationError, v.validate_handler, "a b") == one(
        "handler", "a b", r"Member must satisfy regular expression pattern: [^\s]+"
    )
    assert "length less than or equal to 128" in raises(ValidationError, v.validate_handler, "h" * 129)
    v.validate_handler("index.handler")


@pytest.mark.parametrize(
    ("fn", "field", "low", "high"),
    [
        (v.validate_memory_size, "memorySize", 128, 10240),
        (v.validate_timeout, "timeout", 1, 900),
        (v.validate_ephemeral_storage, "ephemeralStorage.size", 512, 10240),
    ],
)
def test_ranges(fn: Callable[..., None], field: str, low: int, high: int) -> None:
    fn(low)
    fn(high)
    assert raises(ValidationError, fn, low - 1) == one(
        field, str(low - 1), f"Member must have value greater than or equal to {low}"
    )
    assert raises(ValidationError, fn, high + 1) == one(
        field, str(high + 1), f"Member must have value less than or equal to {high}"
    )


def test_architectures() -> None:
    # /multiple_architectures, /uppercase_architecture
    assert raises(ValidationError, v.validate_architectures, ["x86_64", "arm64"]) == one(
        "architectures", "[x86_64, arm64]", "Member must have length less than or equal to 1"
    )
    assert raises(ValidationError, v.validate_architectures, ["X86_64"]) == one(
        "architectures", "[X86_64]",
        "Member must satisfy constraint: [Member must satisfy enum value set: [x86_64, arm64], "
        "Member must not be null]",
    )
    v.validate_architectures(["arm64"])


def test_tracing_and_description() -> None:
    assert raises(ValidationError, v.validate_tracing_mode, "On") == one(
        "tracingConfig.mode", "On", "Member must satisfy enum value set: [Active, PassThrough]"
    )
    v.validate_tracing_mode("Active")
    assert raises(ValidationError, v.validate_description, "d" * 257) == one(
        "description", "d" * 257, "Member must have length less than or equal to 256"
    )
    v.validate_description("d" * 256)


def test_environment_4kb_single_key() -> None:
    # TestLambdaSizeLimits::test_large_environment_variables_fails: measured string is 4097 chars
    variables = {"LARGE_VAR": "x" * 4081}
    msg = raises(InvalidParameterValue, v.validate_environment, variables)
    measured = '{"LARGE_VAR":"' + "x" * 4081 + '"}'
    assert len(measured) == 4097
    assert msg == (
        "Lambda was unable to configure your environment variables because the environment variables you "
        f"have provided exceeded the 4KB limit. String measured: {measured}"
    )
    v.validate_environment({"LARGE_VAR": "x" * 4080})  # exactly 4096


def test_environment_4kb_multiple_keys_keeps_order() -> None:
    variables = {"SMALL_VAR": "ok", "LARGE_VAR": "x" * 4064}
    msg = raises(InvalidParameterValue, v.validate_environment, variables)
    assert msg.endswith('String measured: {"SMALL_VAR":"ok","LARGE_VAR":"' + "x" * 4064 + '"}')
    assert json.loads(msg.split("String measured: ", 1)[1]) == variables


def test_environment_keys() -> None:
    msg = raises(ValidationError, v.validate_environment, {"1BAD": "x"})
    assert msg == (
        "1 validation error detected: Value at 'environment.variables' failed to satisfy constraint: "
        "Map keys must satisfy constraint: [Member must satisfy regular expression pattern: "
        "[a-zA-Z]([a-zA-Z0-9_])+]"
    )
    assert "1BAD" not in msg  # a sensitive member: AWS does not echo it
    msg = raises(InvalidParameterValue, v.validate_environment, {"FOO": "1", "AWS_REGION": "x"})
    assert msg.endswith("Reserved keys used in this request: AWS_REGION")
    v.validate_environment({"FOO": "bar", "MY_AWS_REGION": "x"})


LAYER_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:layer:"
    r"[a-zA-Z0-9-_]+:[0-9]+)|(arn:[a-zA-Z0-9-]+:lambda:::awslayer:[a-zA-Z0-9-_]+)"
)


def layer(name: str, version: int, region: str = R) -> str:
    return f"arn:aws:lambda:{region}:{A}:layer:{name}:{version}"


def test_layers() -> None:
    v.validate_layers([layer("a", 1), layer("b", 2)], region=R)
    # /create_function_with_six_layers
    six = [layer(f"l{i}", 1) for i in range(6)]
    assert raises(InvalidParameterValue, v.validate_layers, six) == "Cannot reference more than 5 layers."
    # /two_layer_versions_single_function_exc, /two_identical_layer_versions_single_function_exc
    for second in (layer("a", 2), layer("a", 1)):
        assert raises(InvalidParameterValue, v.validate_layers, [layer("a", 1), second]) == (
            "Two different versions of the same layer are not allowed to be referenced in the same "
            f"function. {layer('a', 1)} and {second} are versions of the same layer."
        )
    # /add_layer_arn_without_version_exc
    no_version = f"arn:aws:lambda:{R}:{A}:layer:a"
    assert raises(ValidationError, v.validate_layers, [no_version]) == one(
        "layers", f"[{no_version}]",
        "Member must satisfy constraint: [Member must have length less than or equal to 2048, Member must "
        f"have length greater than or equal to 1, Member must satisfy regular expression pattern: "
        f"{LAYER_PATTERN}, Member must not be null]",
    )
    # /create_function_with_layer_in_different_region
    assert raises(InvalidParameterValue, v.validate_layers, [layer("a", 1, "eu-west-1")], region=R) == (
        f"Layers are not in the same region as the function. Layers are expected to be in region {R}."
    )


def test_image_config() -> None:
    v.validate_image_config({"Command": ["app.handler"], "WorkingDirectory": "/var/task"})
    msg = raises(ValidationError, v.validate_image_config, {"WorkingDirectory": "w" * 1001})
    assert "'imageConfig.workingDirectory'" in msg and "less than or equal to 1000" in msg


def test_package_type() -> None:
    v.validate_package_type("Image")
    assert "[Zip, Image]" in raises(ValidationError, v.validate_package_type, "Jar")


# ------------------------------------------------------------------ qualifiers and aliases


def test_url_qualifier() -> None:
    # TestLambdaUrl::test_url_config_exceptions
    for q in ("1", "$LATEST"):
        assert raises(ValidationError, v.validate_url_qualifier, q) == one(
            "qualifier", q, r"Member must satisfy regular expression pattern: ((?!^\d+$)^[0-9a-zA-Z-_]+$)"
        )
    v.validate_url_qualifier("live")


def test_permission_qualifier() -> None:
    # /add_permission_fn_qualifier_invalid, /add_permission_fn_qualifier_latest
    q = "invalid-qualifier-with-?-char"
    assert raises(ValidationError, v.validate_permission_qualifier, q) == one(
        "qualifier", q, r"Member must satisfy regular expression pattern: \$(LATEST(\.PUBLISHED)?)|[a-zA-Z0-9-_$]+"
    )
    assert raises(InvalidParameterValue, v.validate_permission_qualifier, "$LATEST") == (
        "We currently do not support adding policies for $LATEST."
    )
    v.validate_permission_qualifier("valid-with-$-but-doesnotexist")


def test_alias_name() -> None:
    # test_alias_naming /create_alias_number_exception
    assert raises(ValidationError, v.validate_alias_name, "2024") == one(
        "name", "2024", "Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)"
    )
    v.validate_alias_name("v2024")
    assert v.alias_name_valid("live") and not v.alias_name_valid("12") and not v.alias_name_valid("a" * 129)


def test_routing_config() -> None:
    field = "routingConfig.additionalVersionWeights"
    # /routing_config_exc_toomany
    assert raises(
        InvalidParameterValue, v.validate_routing_config, {"2": 0.5, "3": 0.1}, function_version="1"
    ) == "Number of items in AdditionalVersionWeights cannot be greater than 1"
    # /routing_config_exc_toohigh, /routing_config_exc_subzero
    bound = (
        "Map value must satisfy constraint: [Member must have value less than or equal to 1.0, "
        "Member must have value greater than or equal to 0.0, Member must not be null]"
    )
    assert raises(ValidationError, v.validate_routing_config, {"2": 2}, function_version="1") == one(
        field, "{2=2.0}", bound
    )
    assert raises(ValidationError, v.validate_routing_config, {"2": -1.0}, function_version="1") == one(
        field, "{2=-1.0}", bound
    )
    # /routing_config_exc_version_latest
    assert raises(ValidationError, v.validate_routing_config, {"$LATEST": 0.5}, function_version="1") == one(
        field, "{$LATEST=0.5}",
        "Map keys must satisfy constraint: [Member must have length less than or equal to 1024, Member must "
        "have length greater than or equal to 1, Member must satisfy regular expression pattern: [0-9]+]",
    )
    # /target_version_exc_version_latest
    assert raises(
        InvalidParameterValue, v.validate_routing_config, {"1": 0.5}, function_version="$LATEST"
    ) == "$LATEST is not supported for an alias pointing to more than 1 version"
    # /routing_config_exc_sameversion
    assert raises(InvalidParameterValue, v.validate_routing_config, {"1": 0.5}, function_version="1") == (
        "Invalid function version 1. Function version 1 is already included in routing configuration."
    )
    v.validate_routing_config({"2": 0.5}, function_version="1")
    v.validate_routing_config(None, function_version="$LATEST")
    v.validate_routing_config({}, function_version="$LATEST")


# ------------------------------------------------------------------ tags, permissions, concurrency


def test_tags() -> None:
    v.validate_tags({f"k{i}": "v" for i in range(50)})
    too_many = {f"k{i}": "v" for i in range(51)}
    assert raises(InvalidParameterValue, v.validate_tags, too_many) == "Number of tags exceeds resource tag limit."
    # /tag_lambda_too_many_tags_additional: existing keys count
    assert raises(
        InvalidParameterValue, v.validate_tags, {"new": "v"}, existing=[f"k{i}" for i in range(50)]
    ) == "Number of tags exceeds resource tag limit."
    v.validate_tags({"k0": "changed"}, existing=[f"k{i}" for i in range(50)])
    # /tag_empty_tags
    assert raises(InvalidParameterValue, v.validate_tags, {}, tag_resource=True) == (
        "An error occurred and the request cannot be processed."
    )
    raises(ValidationError, v.validate_tags, {"k" * 129: "v"})
    raises(ValidationError, v.validate_tags, {"k": "v" * 257})
    raises(InvalidParameterValue, v.validate_tags, {"aws:owner": "v"})


def test_statement_action_principal() -> None:
    # /add_permission_invalid_statement_id
    assert raises(ValidationError, v.validate_statement_id, "example.com") == one(
        "statementId", "example.com", "Member must satisfy regular expression pattern: ([a-zA-Z0-9-_]+)"
    )
    v.validate_statement_id("s3")
    assert raises(ValidationError, v.validate_action, "lambda:Invoke-Function") == one(
        "action", "lambda:Invoke-Function",
        "Member must satisfy regular expression pattern: (lambda:[*]|lambda:[a-zA-Z]+|[*])",
    )
    for ok in ("lambda:InvokeFunction", "lambda:*", "*", "lambda:InvokeFunctionUrl"):
        v.validate_action(ok)
    # /layer_permission_action_invalid
    assert raises(ValidationError, v.validate_layer_action, "*") == one(
        "action", "*", "Member must satisfy regular expression pattern: lambda:GetLayerVersion"
    )
    # /add_permission_principal_invalid
    assert raises(InvalidParameterValue, v.validate_principal, "notaprincipal") == (
        "The provided principal was invalid. Please check the principal and try again."
    )
    for ok, kind in (
        ("*", "*"),
        ("123456789012", "account"),
        ("arn:aws:iam::123456789012:role/x", "arn"),
        ("s3.amazonaws.com", "service"),
        ("events.amazonaws.com", "service"),
    ):
        v.validate_principal(ok)
        assert v.principal_kind(ok) == kind


def test_principal_with_space_is_validation_error() -> None:
    assert raises(ValidationError, v.validate_principal, "a b") == one(
        "principal", "a b", r"Member must satisfy regular expression pattern: [^\s]+"
    )


def test_reserved_concurrency() -> None:
    v.validate_reserved_concurrency(0)
    v.validate_reserved_concurrency(900)
    assert raises(ValidationError, v.validate_reserved_concurrency, -1) == one(
        "reservedConcurrentExecutions", "-1", "Member must have value greater than or equal to 0"
    )
    # test_function_concurrency_limits
    assert raises(InvalidParameterValue, v.validate_reserved_concurrency, 901) == (
        "Specified ReservedConcurrentExecutions for function decreases account's "
        "UnreservedConcurrentExecution below its minimum value of [100]."
    )
    raises(InvalidParameterValue, v.validate_reserved_concurrency, 500, reserved_elsewhere=401)


# ------------------------------------------------------------------ URLs


def test_url_fields() -> None:
    # TestLambdaURL::test_lambda_url_invalid_invoke_mode
    assert raises(ValidationError, v.validate_invoke_mode, "UNKNOWN") == one(
        "invokeMode", "UNKNOWN", "Member must satisfy enum value set: [RESPONSE_STREAM, BUFFERED]"
    )
    v.validate_invoke_mode("RESPONSE_STREAM")
    assert "at 'authType'" in raises(ValidationError, v.validate_url_auth_type, "none")
    v.validate_url_auth_type("NONE")
    v.validate_url_auth_type("AWS_IAM")


def test_cors() -> None:
    v.validate_cors({"AllowOrigins": ["*"], "AllowMethods": ["GET", "POST"], "MaxAge": 86400})
    assert "'cors.allowMethods'" in raises(ValidationError, v.validate_cors, {"AllowMethods": ["GET"] * 7})
    assert "'cors.maxAge'" in raises(ValidationError, v.validate_cors, {"MaxAge": 86401})
    assert "'cors.allowOrigins'" in raises(ValidationError, v.validate_cors, {"AllowOrigins": [""]})
    msg = raises(ValidationError, v.validate_cors, {"AllowHeaders": ["h" * 1025], "MaxAge": -1})
    assert msg.startswith("2 validation errors detected: ")


def test_function_version_param() -> None:
    # test_list_functions /list_functions_invalid_functionversion
    assert raises(ValidationError, v.validate_function_version_param, "invalid") == one(
        "functionVersion", "invalid", "Member must satisfy enum value set: [ALL]"
    )
    v.validate_function_version_param("ALL")


def test_boxed_integers_null_and_wrong_types() -> None:
    assert raises(ValidationError, v.validate_ephemeral_storage, None) == (
        "1 validation error detected: Value null at 'ephemeralStorage.size' failed to satisfy constraint: "
        "Member must not be null"
    )
    raises(InvalidRequestContent, v.validate_timeout, "abc")
    raises(InvalidRequestContent, v.validate_memory_size, True)
    v.validate_timeout(30.0)
    raises(ValidationError, v.validate_reserved_concurrency, None)
    msg = raises(ValidationError, v.validate_routing_config, {"2": "x"}, function_version="1")
    assert "{2=x}" in msg
