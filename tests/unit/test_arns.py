"""ARN and function-name parsing against AWS's recorded answers (aws-recorded-errors.txt)."""

from __future__ import annotations

import pytest

from flocid.lambda_.arns import (
    FUNCTIONS_ONLY_MESSAGE,
    TAGS_ON_QUALIFIED_MESSAGE,
    FunctionRef,
    is_alias,
    is_latest,
    is_version_number,
    parse_function_name,
    parse_layer_version_arn,
    parse_taggable_arn,
    qualifier_kind,
)
from flocid.lambda_.errors import (
    AccessDenied,
    InvalidParameterValue,
    ResourceNotFound,
    ValidationError,
)

R = "us-east-1"
A = "111111111111"
FN_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?"
    r"(\d{12}:)?(function:)?([a-zA-Z0-9-_]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?"
)


def parse(value: str, **kw: object) -> FunctionRef:
    return parse_function_name(value, region=R, account=A, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "name", "qualifier"),
    [
        ("myfn", "myfn", None),
        ("myfn:1", "myfn", "1"),
        ("myfn:$LATEST", "myfn", "$LATEST"),
        ("myfn:live", "myfn", "live"),
        (f"{A}:function:myfn", "myfn", None),
        (f"{A}:function:myfn:prod", "myfn", "prod"),
        (f"arn:aws:lambda:{R}:{A}:function:myfn", "myfn", None),
        (f"arn:aws:lambda:{R}:{A}:function:myfn:7", "myfn", "7"),
        (f"{R}:{A}:function:my-fn_2", "my-fn_2", None),
        ("function:myfn", "myfn", None),
    ],
)
def test_accepted_spellings(value: str, name: str, qualifier: str | None) -> None:
    ref = parse(value)
    assert (ref.name, ref.qualifier, ref.region, ref.account) == (name, qualifier, R, A)


def test_ref_arns() -> None:
    ref = parse("myfn:3")
    assert ref.arn == f"arn:aws:lambda:{R}:{A}:function:myfn:3"
    assert ref.unqualified_arn == f"arn:aws:lambda:{R}:{A}:function:myfn"
    assert parse("myfn").latest_arn == f"arn:aws:lambda:{R}:{A}:function:myfn:$LATEST"
    assert parse("myfn").arn == f"arn:aws:lambda:{R}:{A}:function:myfn"


def test_qualifier_parameter_alone_and_matching() -> None:
    assert parse("myfn", qualifier="2").qualifier == "2"
    assert parse("myfn:2", qualifier="2").qualifier == "2"
    assert parse("myfn", qualifier="").qualifier is None


def test_qualifier_mismatch() -> None:
    # test_ops_with_arn_qualifier_mismatch /not_match_exception
    with pytest.raises(InvalidParameterValue) as e:
        parse(f"arn:aws:lambda:{R}:{A}:function:some-function:1", qualifier="$LATEST")
    assert e.value.message == (
        "The derived qualifier from the function name does not match the specified qualifier."
    )
    assert e.value.status == 400


def test_name_too_long_at_creation_is_invalid_parameter() -> None:
    # test_function_arns /long_function_name_exc
    name = "a" * 65
    with pytest.raises(InvalidParameterValue) as e:
        parse(name, creating=True)
    assert e.value.message == (
        f"1 validation error detected: Value '{name}' at 'functionName' failed to satisfy constraint: "
        "Member must have length less than or equal to 64"
    )
    assert parse("a" * 64, creating=True).name == "a" * 64


def test_name_part_too_long_in_arn_at_creation() -> None:
    value = f"arn:aws:lambda:{R}:{A}:function:{'b' * 65}"
    assert len(value) <= 140
    with pytest.raises(InvalidParameterValue):
        parse(value, creating=True)


def test_arn_too_long_is_validation_exception() -> None:
    # test_function_arns /long_function_arn_exc
    value = f"arn:aws:lambda:{R}:{A}:function:{'a' * 100}"
    assert len(value) > 140
    with pytest.raises(ValidationError) as e:
        parse(value, creating=True)
    assert e.value.code == "ValidationException"
    assert e.value.message == (
        f"1 validation error detected: Value '{value}' at 'functionName' failed to satisfy constraint: "
        "Member must have length less than or equal to 140"
    )


def test_bad_pattern() -> None:
    # test_function_arns /invalid_function_name_exc
    with pytest.raises(ValidationError) as e:
        parse("invalid:function:name")
    assert e.value.message == (
        "1 validation error detected: Value 'invalid:function:name' at 'functionName' failed to "
        f"satisfy constraint: Member must satisfy regular expression pattern: {FN_PATTERN}"
    )


def test_bad_pattern_namespaced_invoke() -> None:
    # test_invalid_invoke /invoke_function_name_pattern_exc
    value = f"arn:aws:lambda:{R}:123400000000@function:myfn"
    with pytest.raises(ValidationError) as e:
        parse(value, namespaced=True)
    assert e.value.message == (
        f"1 validation error detected: Value '{value}' at 'functionName' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: (arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?"
        r"[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?(\d{12}:)?(function:)?([a-zA-Z0-9-_\.]+)"
        r"(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?"
    )


def test_namespaced_accepts_dots_and_published() -> None:
    ref = parse("my.fn:$LATEST.PUBLISHED", namespaced=True)
    assert (ref.name, ref.qualifier) == ("my.fn", "$LATEST.PUBLISHED")
    with pytest.raises(ValidationError):
        parse("my.fn")


def test_length_and_pattern_together() -> None:
    value = "x" * 141 + "!"
    with pytest.raises(ValidationError) as e:
        parse(value)
    assert e.value.message is not None
    assert e.value.message.startswith("2 validation errors detected: ")
    assert "; " in e.value.message


def test_empty_name() -> None:
    with pytest.raises(ValidationError) as e:
        parse("")
    assert e.value.message is not None
    assert "Member must have length greater than or equal to 1" in e.value.message


def test_other_region() -> None:
    # test_function_arns /function_arn_other_region_exc, test_get_function_wrong_region
    with pytest.raises(ResourceNotFound) as e:
        parse(f"arn:aws:lambda:ap-southeast-1:{A}:function:myfn")
    assert e.value.status == 404
    assert e.value.message == (
        f"Functions from 'ap-southeast-1' are not reachable in this region ('{R}')"
    )
    assert e.value.body() == {"Type": "User", "Message": e.value.message}


def test_other_region_wins_over_length() -> None:
    value = f"arn:aws:lambda:ap-southeast-1:{A}:function:{'a' * 100}"
    with pytest.raises(ResourceNotFound):
        parse(value)


def test_other_account() -> None:
    # test_function_arns /function_arn_other_account_exc: 403, message None
    with pytest.raises(AccessDenied) as e:
        parse(f"arn:aws:lambda:{R}:222222222222:function:myfn")
    assert e.value.status == 403
    assert e.value.message is None
    assert e.value.body() == {"Type": "User", "Message": None}
    with pytest.raises(AccessDenied):
        parse("222222222222:function:myfn")
    ref = parse("222222222222:function:myfn", allow_other_account=True)
    assert ref.name == "myfn"


def test_qualifier_parameter_validation() -> None:
    with pytest.raises(ValidationError) as e:
        parse("myfn", qualifier="bad?q")
    assert e.value.message == (
        "1 validation error detected: Value 'bad?q' at 'qualifier' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: (|[a-zA-Z0-9$_-]+)"
    )


def test_not_allowed_qualifier() -> None:
    with pytest.raises(InvalidParameterValue) as e:
        parse("myfn:1", allow_qualifier=False)
    assert e.value.message == FUNCTIONS_ONLY_MESSAGE
    with pytest.raises(InvalidParameterValue) as e:
        parse("myfn", qualifier="$LATEST", allow_qualifier=False, qualified_message="custom")
    assert e.value.message == "custom"
    assert parse("myfn", allow_qualifier=False).qualifier is None


def test_qualifier_kinds() -> None:
    assert is_latest(None) and is_latest("$LATEST") and not is_latest("1")
    assert is_version_number("12") and not is_version_number("v12") and not is_version_number(None)
    assert is_alias("live") and not is_alias("12") and not is_alias("$LATEST") and not is_alias(None)
    assert qualifier_kind(None) == "latest"
    assert qualifier_kind("$LATEST") == "latest"
    assert qualifier_kind("3") == "version"
    assert qualifier_kind("prod") == "alias"


def test_layer_version_arn() -> None:
    ref = parse_layer_version_arn(f"arn:aws:lambda:{R}:{A}:layer:my-layer:3")
    assert (ref.name, ref.version, ref.region, ref.account) == ("my-layer", 3, R, A)
    assert ref.arn == f"arn:aws:lambda:{R}:{A}:layer:my-layer:3"
    assert ref.layer_arn == f"arn:aws:lambda:{R}:{A}:layer:my-layer"
    # test_layer_exceptions /get_layer_version_by_arn_exc_invalidarn
    bad = f"arn:aws:lambda:{R}:{A}:layer:my-layer"
    with pytest.raises(ValidationError) as e:
        parse_layer_version_arn(bad)
    assert e.value.message == (
        f"1 validation error detected: Value '{bad}' at 'arn' failed to satisfy constraint: Member must "
        r"satisfy regular expression pattern: (arn:(aws[a-zA-Z-]*)?:lambda:(eusc-)?[a-z]{2}((-gov)|"
        r"(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:layer:[a-zA-Z0-9-_]+:[0-9]+)|(arn:[a-zA-Z0-9-]+:lambda:::"
        r"awslayer:[a-zA-Z0-9-_]+)"
    )


TAG_PATTERN = (
    r"arn:(aws[a-zA-Z-]*):lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:"
    r"(function:[a-zA-Z0-9-_]+(:(\$LATEST|[a-zA-Z0-9-_]+))?|layer:([a-zA-Z0-9-_]+)|code-signing-config:"
    r"csc-[a-z0-9]{17}|event-source-mapping:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12}|capacity-provider:[a-zA-Z0-9-_]+)"
)


def test_taggable_arns() -> None:
    fn = parse_taggable_arn(f"arn:aws:lambda:{R}:{A}:function:myfn")
    assert (fn.kind, fn.id, fn.region, fn.account) == ("function", "myfn", R, A)
    uuid = "0f2a3b4c-1d2e-4f50-8a9b-0c1d2e3f4a5b"
    esm = parse_taggable_arn(f"arn:aws:lambda:{R}:{A}:event-source-mapping:{uuid}")
    assert (esm.kind, esm.id) == ("event-source-mapping", uuid)
    # test_tag_exceptions[lambda_function] /aliased_arn_exception, and $LATEST too
    for q in ("alias", "1", "$LATEST"):
        with pytest.raises(InvalidParameterValue) as e:
            parse_taggable_arn(f"arn:aws:lambda:{R}:{A}:function:myfn:{q}")
        assert e.value.message == TAGS_ON_QUALIFIED_MESSAGE
    # /invalid_arn_exception and an ESM ARN with a qualifier
    for bad in (
        f"arn:aws:lambda:{R}:{A}:foobar:myfn",
        f"arn:aws:lambda:{R}:{A}:event-source-mapping:{uuid}:alias",
        "arn:aws:something",
    ):
        with pytest.raises(ValidationError) as ve:
            parse_taggable_arn(bad)
        assert ve.value.message == (
            f"1 validation error detected: Value '{bad}' at 'resource' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {TAG_PATTERN}"
        )
