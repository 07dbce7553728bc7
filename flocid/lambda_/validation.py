"""Validation of Lambda request fields, with AWS's errors word for word. Sans-IO: plain functions.

Two kinds of failure, raised in AWS's order:

* Model constraints (length, pattern, range, enum) are ``ValidationException`` in AWS's
  multi-error form ``"N validation error(s) detected: <msg>; <msg>"``. Each ``validate_*`` takes an
  optional :class:`Violations`; pass one to collect problems over several fields and raise once
  (``violations.raise_if_any()``). Without one, the function raises at once.
* Service rules (deprecated runtime, too many layers, 4 KB environment, ...) are mostly
  ``InvalidParameterValueException``. AWS checks them after the model constraints, so with a
  collector they are *deferred*: ``raise_if_any`` raises the first of them only when no model
  constraint failed.

Where each non-obvious message comes from (``aws-recorded-errors.txt``, test id / snapshot key;
``peers.md`` 1.10 item n):

* runtime enum, InvalidParameterValue, no "1 validation error" prefix, no quotes, list order and the
  trailing "or be a valid ARN": ``TestLambdaFunction::test_create_lambda_exceptions
  /invalid_runtime_exc`` and ``/uppercase_runtime_exc``. The list is AWS's hash-set order, kept
  verbatim in :data:`RUNTIME_ENUM_MESSAGE_ORDER`.
* deprecated runtime: ``TestRuntimeValidation::test_create_deprecated_function_runtime_with_validation_enabled``
  (java8, go1.x, provided, ruby2.7, nodejs14.x, python3.7, dotnetcore3.1, nodejs12.x).
  The older names of the botocore enum (python2.7, nodejs10.x, ...) get the same message.
* role pattern: ``test_create_lambda_exceptions /invalid_role_arn_exc``.
* architectures (list length, enum with "Member must not be null"):
  ``test_create_lambda_exceptions /multiple_architectures`` and ``/uppercase_architecture``.
* environment 4 KB: ``TestLambdaSizeLimits::test_large_environment_variables_fails`` and
  ``test_large_environment_fails_multiple_keys``: the measured string is the compact JSON of the
  Variables map in request order; both recordings measure exactly 4097 characters, so 4096 passes.
* reserved environment keys: not in the recordings; message as reported by AWS users
  ("... contains reserved keys that are currently not supported for modification. Reserved keys
  used in this request: AWS_REGION"). Key pattern message: sensitive member, so no value is quoted
  (AWS's convention for sensitive shapes) -- unrecorded, best knowledge.
* layers: ``TestLambdaLayer::test_layer_function_quota_exception`` (more than 5),
  ``test_layer_function_exceptions`` (same layer twice, even the identical ARN; layer ARN without
  version; other region).
* alias name: ``TestLambdaAlias::test_alias_naming /create_alias_number_exception``.
* routing config: ``TestLambdaAlias::test_notfound_and_invalid_routingconfigs`` (too many, weight
  out of range, ``$LATEST`` key, ``$LATEST`` target, same version).
* tags: ``TestLambdaTags::test_tag_limits`` (over 50), ``test_tag_exceptions /tag_empty_tags``.
* statement id: ``TestLambdaPermissions::test_permission_exceptions /add_permission_invalid_statement_id``;
  principal: ``/add_permission_principal_invalid``; permission qualifier pattern:
  ``/add_permission_fn_qualifier_invalid``; ``$LATEST``: ``/add_permission_fn_qualifier_latest``.
* layer permission action: ``TestLambdaLayer::test_layer_policy_exceptions /layer_permission_action_invalid``.
* URL qualifier: ``TestLambdaUrl::test_url_config_exceptions`` (numeric and ``$LATEST``);
  invoke mode: ``TestLambdaURL::test_lambda_url_invalid_invoke_mode``.
* reserved concurrency floor: ``TestLambdaReservedConcurrency::test_function_concurrency_limits``.
* timeout / memory "less than or equal to" texts: AWS messages quoted in public deploy logs
  ("Value '1200' at 'timeout' ... less than or equal to 900", ValidationException).

Enum lists that AWS has not been recorded printing (tracing mode, auth type, package type) are
printed in the order a Java ``HashSet`` of the values iterates, which reproduces the recorded
runtime list, ``[x86_64, arm64]``, ``[Terminate, Allow]`` and ``[PublishedVersions, None]`` (and
does not reproduce ``invokeMode``'s, so it is a best guess).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flocid.lambda_.errors import (
    InvalidParameterValue,
    InvalidRequestContent,
    LambdaError,
    ValidationError,
)

# --------------------------------------------------------------------------------------------
# The collector and Java-style value rendering
# --------------------------------------------------------------------------------------------


def java_str(value: Any) -> str:
    """Render a value the way AWS's (Java) validator prints it inside ``Value '...'``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _java_double(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{java_str(k)}={java_str(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(java_str(v) for v in value) + "]"
    return str(value)


def _java_double(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    if value == int(value) and abs(value) < 1e7:
        return f"{int(value)}.0"
    text = repr(value)
    if "e" in text:
        mantissa, exp = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        return f"{mantissa}E{int(exp)}"
    return text


class Violations:
    """Collects model-constraint failures (one ValidationError) and deferred service-rule errors."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.deferred: list[LambdaError] = []

    def add(self, field: str, value: Any, constraint: str, *, sensitive: bool = False) -> None:
        """Record ``Value '<value>' at '<field>' failed to satisfy constraint: <constraint>``."""
        if sensitive:
            shown = "Value"
        elif value is None:
            shown = "Value null"
        else:
            shown = f"Value '{java_str(value)}'"
        self.messages.append(f"{shown} at '{field}' failed to satisfy constraint: {constraint}")

    def add_raw(self, message: str) -> None:
        self.messages.append(message)

    def defer(self, error: LambdaError) -> None:
        """A service-rule error: raised only when no model constraint failed."""
        self.deferred.append(error)

    def __len__(self) -> int:
        return len(self.messages)

    def __bool__(self) -> bool:
        return bool(self.messages or self.deferred)

    def message(self) -> str:
        n = len(self.messages)
        return f"{n} validation error{'s' if n != 1 else ''} detected: " + "; ".join(self.messages)

    def error(self, cls: type[LambdaError] = ValidationError) -> LambdaError | None:
        if self.messages:
            return cls(self.message())
        if self.deferred:
            return self.deferred[0]
        return None

    def raise_if_any(self, cls: type[LambdaError] = ValidationError) -> None:
        err = self.error(cls)
        if err is not None:
            raise err


def _sink(violations: Violations | None) -> Violations:
    return violations if violations is not None else Violations()


def _done(own: Violations, given: Violations | None) -> None:
    if given is None:
        own.raise_if_any()


def _len_max(n: int) -> str:
    return f"Member must have length less than or equal to {n}"


def _len_min(n: int) -> str:
    return f"Member must have length greater than or equal to {n}"


def _val_max(n: int | float) -> str:
    return f"Member must have value less than or equal to {n}"


def _val_min(n: int | float) -> str:
    return f"Member must have value greater than or equal to {n}"


def _pattern(p: str) -> str:
    return f"Member must satisfy regular expression pattern: {p}"


def _enum(values: Iterable[str]) -> str:
    return f"Member must satisfy enum value set: [{', '.join(values)}]"


def _full(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII)


# --------------------------------------------------------------------------------------------
# Patterns, as AWS prints them (the recordings win over botocore's model where they differ)
# --------------------------------------------------------------------------------------------

REGION_RE = r"(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}"
FUNCTION_NAME_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?"
    r"(\d{12}:)?(function:)?([a-zA-Z0-9-_]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?"
)
#: Invoke's (and other "namespaced" operations') variant: dots in names, ``$LATEST.PUBLISHED``.
NAMESPACED_FUNCTION_NAME_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:)?((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?"
    r"(\d{12}:)?(function:)?([a-zA-Z0-9-_\.]+)(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?"
)
QUALIFIER_PATTERN = r"(|[a-zA-Z0-9$_-]+)"
PERMISSION_QUALIFIER_PATTERN = r"\$(LATEST(\.PUBLISHED)?)|[a-zA-Z0-9-_$]+"
URL_QUALIFIER_PATTERN = r"((?!^\d+$)^[0-9a-zA-Z-_]+$)"
ALIAS_PATTERN = r"(?!^[0-9]+$)([a-zA-Z0-9-_]+)"
ROLE_PATTERN = r"arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+"
HANDLER_PATTERN = r"[^\s]+"
ENV_KEY_PATTERN = r"[a-zA-Z]([a-zA-Z0-9_])+"
LAYER_VERSION_ARN_PATTERN = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:layer:"
    r"[a-zA-Z0-9-_]+:[0-9]+)|(arn:[a-zA-Z0-9-]+:lambda:::awslayer:[a-zA-Z0-9-_]+)"
)
STATEMENT_ID_PATTERN = r"([a-zA-Z0-9-_]+)"
ACTION_PATTERN = r"(lambda:[*]|lambda:[a-zA-Z]+|[*])"
LAYER_ACTION_PATTERN = r"lambda:GetLayerVersion"
PRINCIPAL_PATTERN = r"[^\s]+"
VERSION_KEY_PATTERN = r"[0-9]+"

_QUALIFIER_RE = _full(r"[a-zA-Z0-9$_-]*")
_PERMISSION_QUALIFIER_RE = _full(PERMISSION_QUALIFIER_PATTERN)
_URL_QUALIFIER_RE = _full(r"(?!\d+$)[0-9a-zA-Z_-]+")
_ALIAS_RE = _full(r"(?![0-9]+$)[a-zA-Z0-9_-]+")
_ROLE_RE = _full(ROLE_PATTERN)
_HANDLER_RE = _full(HANDLER_PATTERN)
_ENV_KEY_RE = _full(ENV_KEY_PATTERN)
_LAYER_ARN_RE = _full(
    r"arn:(?P<partition>aws[a-zA-Z-]*)?:lambda:(?P<region>" + REGION_RE + r"):(?P<account>\d{12}):layer:"
    r"(?P<name>[a-zA-Z0-9_-]+):(?P<version>[0-9]+)"
)
_AWS_LAYER_RE = _full(r"arn:[a-zA-Z0-9-]+:lambda:::awslayer:[a-zA-Z0-9_-]+")
_STATEMENT_ID_RE = _full(r"[a-zA-Z0-9_-]+")
_ACTION_RE = _full(ACTION_PATTERN)
_PRINCIPAL_RE = _full(PRINCIPAL_PATTERN)
_VERSION_KEY_RE = _full(VERSION_KEY_PATTERN)

# --------------------------------------------------------------------------------------------
# Runtimes
# --------------------------------------------------------------------------------------------

#: AWS's accepted runtimes, in the order its error message prints them (recorded Nov 2025).
RUNTIME_ENUM_MESSAGE_ORDER: tuple[str, ...] = (
    "nodejs20.x", "python3.14", "provided.al2023", "python3.12", "python3.13", "nodejs24.x",
    "nodejs22.x", "java25", "python3.10", "python3.11", "java21", "ruby3.3", "ruby3.4", "ruby3.2",
    "python3.8", "python3.9", "java17", "nodejs16.x", "dotnet10", "dotnet8", "java11", "dotnet6",
    "nodejs18.x", "provided.al2", "java8.al2",
)  # fmt: skip
VALID_RUNTIMES: frozenset[str] = frozenset(RUNTIME_ENUM_MESSAGE_ORDER)
#: Known to AWS, refused for create/update with the "no longer supported" message.
DEPRECATED_RUNTIMES: frozenset[str] = frozenset({
    "nodejs", "nodejs4.3", "nodejs4.3-edge", "nodejs6.10", "nodejs8.10", "nodejs10.x", "nodejs12.x",
    "nodejs14.x", "java8", "python2.7", "python3.6", "python3.7", "dotnetcore1.0", "dotnetcore2.0",
    "dotnetcore2.1", "dotnetcore3.1", "go1.x", "ruby2.5", "ruby2.7", "provided",
})  # fmt: skip

DEPRECATED_RUNTIME_MESSAGE = (
    "The runtime parameter of {runtime} is no longer supported for creating or updating AWS Lambda "
    "functions. We recommend you use a supported runtime while creating or updating functions."
)


def validate_runtime(runtime: str, *, creating: bool, violations: Violations | None = None) -> None:
    """The runtime value. ``creating`` is True for CreateFunction and UpdateFunctionConfiguration.

    An unknown value is an InvalidParameterValue (not a ValidationException, and unquoted). A known
    deprecated runtime is refused for create/update and accepted otherwise (stored functions).
    """
    own = _sink(violations)
    if runtime in VALID_RUNTIMES:
        pass
    elif runtime in DEPRECATED_RUNTIMES:
        if creating:
            own.defer(InvalidParameterValue(DEPRECATED_RUNTIME_MESSAGE.format(runtime=runtime)))
    else:
        own.defer(
            InvalidParameterValue(
                f"Value {runtime} at 'runtime' failed to satisfy constraint: "
                f"{_enum(RUNTIME_ENUM_MESSAGE_ORDER)} or be a valid ARN"
            )
        )
    _done(own, violations)


# --------------------------------------------------------------------------------------------
# Function configuration
# --------------------------------------------------------------------------------------------


def validate_handler(handler: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if len(handler) > 128:
        own.add("handler", handler, _len_max(128))
    if not _HANDLER_RE.fullmatch(handler):
        own.add("handler", handler, _pattern(HANDLER_PATTERN))
    _done(own, violations)


def validate_role(role: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if not _ROLE_RE.fullmatch(role):
        own.add("role", role, _pattern(ROLE_PATTERN))
    _done(own, violations)


def _int_range(
    own: Violations, field: str, value: Any, lo: int | None, hi: int | None
) -> None:
    """A boxed integer: null and non-integers are refused too (a JSON string would be a
    deserialisation error at AWS; here it is reported as the constraint it breaks)."""
    if value is None:
        own.add(field, None, "Member must not be null")
        return
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequestContent(
                f"Could not parse request body into json: Cannot deserialize value of type "
                f"`java.lang.Integer` from {type(value).__name__} value '{java_str(value)}'"
            )
    if lo is not None and value < lo:
        own.add(field, value, _val_min(lo))
    elif hi is not None and value > hi:
        own.add(field, value, _val_max(hi))


def validate_memory_size(value: Any, violations: Violations | None = None) -> None:
    own = _sink(violations)
    _int_range(own, "memorySize", value, 128, 10240)
    _done(own, violations)


def validate_timeout(value: Any, violations: Violations | None = None) -> None:
    own = _sink(violations)
    _int_range(own, "timeout", value, 1, 900)
    _done(own, violations)


def validate_ephemeral_storage(size: Any, violations: Violations | None = None) -> None:
    own = _sink(violations)
    _int_range(own, "ephemeralStorage.size", size, 512, 10240)
    _done(own, violations)


ARCHITECTURES = ("x86_64", "arm64")


def validate_architectures(values: Sequence[str], violations: Violations | None = None) -> None:
    own = _sink(violations)
    if len(values) > 1:
        own.add("architectures", list(values), _len_max(1))
    elif len(values) < 1:
        own.add("architectures", list(values), _len_min(1))
    elif any(v not in ARCHITECTURES for v in values):
        own.add(
            "architectures",
            list(values),
            f"Member must satisfy constraint: [{_enum(ARCHITECTURES)}, Member must not be null]",
        )
    _done(own, violations)


def validate_tracing_mode(mode: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if mode not in ("Active", "PassThrough"):
        own.add("tracingConfig.mode", mode, _enum(("Active", "PassThrough")))
    _done(own, violations)


def validate_package_type(value: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if value not in ("Zip", "Image"):
        own.add("packageType", value, _enum(("Zip", "Image")))
    _done(own, violations)


def validate_description(description: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if len(description) > 256:
        own.add("description", description, _len_max(256))
    _done(own, violations)


ENV_LIMIT_BYTES = 4096
#: Keys the runtime sets itself (AWS docs, "Defined runtime environment variables": reserved ones).
RESERVED_ENV_KEYS: frozenset[str] = frozenset({
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
})  # fmt: skip


def environment_measure(variables: Mapping[str, str]) -> str:
    """The string AWS measures against the 4 KB limit: compact JSON, request order, no escaping of
    non-ASCII (Jackson's default)."""
    return json.dumps(dict(variables), separators=(",", ":"), ensure_ascii=False)


def validate_environment(variables: Mapping[str, str], violations: Violations | None = None) -> None:
    own = _sink(violations)
    if any(not isinstance(k, str) or not _ENV_KEY_RE.fullmatch(k) for k in variables):
        own.add(
            "environment.variables",
            None,
            f"Map keys must satisfy constraint: [{_pattern(ENV_KEY_PATTERN)}]",
            sensitive=True,
        )
    else:
        reserved = [k for k in variables if k in RESERVED_ENV_KEYS]
        if reserved:
            own.defer(
                InvalidParameterValue(
                    "Lambda was unable to configure your environment variables because the environment "
                    "variables you have provided contains reserved keys that are currently not supported "
                    f"for modification. Reserved keys used in this request: {', '.join(reserved)}"
                )
            )
        measured = environment_measure(variables)
        if len(measured.encode("utf-8")) > ENV_LIMIT_BYTES:
            own.defer(
                InvalidParameterValue(
                    "Lambda was unable to configure your environment variables because the environment "
                    "variables you have provided exceeded the 4KB limit. String measured: " + measured
                )
            )
    _done(own, violations)


MAX_LAYERS = 5


def _layer_key(arn: str) -> str:
    """A layer ARN without its version (AWS-managed ``awslayer`` ARNs are their own key)."""
    m = _LAYER_ARN_RE.fullmatch(arn)
    return arn.rsplit(":", 1)[0] if m else arn


def validate_layers(
    layers: Sequence[str], *, region: str | None = None, violations: Violations | None = None
) -> None:
    """Shape of each layer version ARN, at most 5, one version per layer, same region as ``region``.

    Whether each layer version exists is the store's question (AWS: 400 "Layer version <arn> does
    not exist.").
    """
    own = _sink(violations)
    bad = any(
        not isinstance(a, str)
        or not 1 <= len(a) <= 2048
        or not (_LAYER_ARN_RE.fullmatch(a) or _AWS_LAYER_RE.fullmatch(a))
        for a in layers
    )
    if bad:
        own.add(
            "layers",
            list(layers),
            "Member must satisfy constraint: ["
            f"{_len_max(2048)}, {_len_min(1)}, {_pattern(LAYER_VERSION_ARN_PATTERN)}, "
            "Member must not be null]",
        )
    elif len(layers) > MAX_LAYERS:
        own.defer(InvalidParameterValue(f"Cannot reference more than {MAX_LAYERS} layers."))
    else:
        seen: dict[str, str] = {}
        for arn in layers:
            key = _layer_key(arn)
            if key in seen:
                own.defer(
                    InvalidParameterValue(
                        "Two different versions of the same layer are not allowed to be referenced in "
                        f"the same function. {seen[key]} and {arn} are versions of the same layer."
                    )
                )
                break
            seen[key] = arn
        else:
            if region is not None:
                for arn in layers:
                    m = _LAYER_ARN_RE.fullmatch(arn)
                    if m and m["region"] != region:
                        own.defer(
                            InvalidParameterValue(
                                "Layers are not in the same region as the function. "
                                f"Layers are expected to be in region {region}."
                            )
                        )
                        break
    _done(own, violations)


def validate_image_config(config: Mapping[str, Any], violations: Violations | None = None) -> None:
    own = _sink(violations)
    for key, field in (("EntryPoint", "imageConfig.entryPoint"), ("Command", "imageConfig.command")):
        items = config.get(key)
        if items is not None and len(items) > 1500:
            own.add(field, list(items), _len_max(1500))
    wd = config.get("WorkingDirectory")
    if wd is not None and len(wd) > 1000:
        own.add("imageConfig.workingDirectory", wd, _len_max(1000))
    _done(own, violations)


# --------------------------------------------------------------------------------------------
# Qualifiers and aliases
# --------------------------------------------------------------------------------------------


def validate_qualifier(qualifier: str, violations: Violations | None = None) -> None:
    """The ``Qualifier`` request parameter of most operations (``(|[a-zA-Z0-9$_-]+)``, <= 128)."""
    own = _sink(violations)
    if len(qualifier) > 128:
        own.add("qualifier", qualifier, _len_max(128))
    if not _QUALIFIER_RE.fullmatch(qualifier):
        own.add("qualifier", qualifier, _pattern(QUALIFIER_PATTERN))
    _done(own, violations)


def validate_url_qualifier(qualifier: str, violations: Violations | None = None) -> None:
    """Function URL configs exist only for ``$LATEST`` (no qualifier) and aliases."""
    own = _sink(violations)
    if len(qualifier) > 128:
        own.add("qualifier", qualifier, _len_max(128))
    if not _URL_QUALIFIER_RE.fullmatch(qualifier):
        own.add("qualifier", qualifier, _pattern(URL_QUALIFIER_PATTERN))
    _done(own, violations)


def validate_permission_qualifier(qualifier: str, violations: Violations | None = None) -> None:
    """AddPermission's Qualifier: its own pattern, and no policies on ``$LATEST``."""
    own = _sink(violations)
    if len(qualifier) > 128:
        own.add("qualifier", qualifier, _len_max(128))
    if not _PERMISSION_QUALIFIER_RE.fullmatch(qualifier):
        own.add("qualifier", qualifier, _pattern(PERMISSION_QUALIFIER_PATTERN))
    elif qualifier == "$LATEST":
        own.defer(InvalidParameterValue("We currently do not support adding policies for $LATEST."))
    _done(own, violations)


def alias_name_valid(name: str) -> bool:
    return 1 <= len(name) <= 128 and bool(_ALIAS_RE.fullmatch(name))


def validate_alias_name(name: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if len(name) > 128:
        own.add("name", name, _len_max(128))
    if not _ALIAS_RE.fullmatch(name):
        own.add("name", name, _pattern(ALIAS_PATTERN))
    _done(own, violations)


def _weight(w: Any) -> float | None:
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        return None
    return float(w)


def _weight_ok(w: Any) -> bool:
    f = _weight(w)
    return f is not None and 0.0 <= f <= 1.0


def validate_routing_config(
    weights: Mapping[str, float] | None,
    *,
    function_version: str | None,
    violations: Violations | None = None,
) -> None:
    """``RoutingConfig.AdditionalVersionWeights`` of CreateAlias/UpdateAlias.

    Whether the versions exist is the store's question (404 "Function not found: <arn>:<v>").
    """
    own = _sink(violations)
    if not weights:
        _done(own, violations)
        return
    field = "routingConfig.additionalVersionWeights"
    if any(not (1 <= len(k) <= 1024 and _VERSION_KEY_RE.fullmatch(k)) for k in weights):
        own.add(
            field,
            dict(weights),
            f"Map keys must satisfy constraint: [{_len_max(1024)}, {_len_min(1)}, "
            f"{_pattern(VERSION_KEY_PATTERN)}]",
        )
    elif not all(_weight_ok(w) for w in weights.values()):
        own.add(
            field,
            {k: (_weight(w) if _weight(w) is not None else w) for k, w in weights.items()},
            "Map value must satisfy constraint: [Member must have value less than or equal to 1.0, "
            "Member must have value greater than or equal to 0.0, Member must not be null]",
        )
    elif len(weights) > 1:
        own.defer(
            InvalidParameterValue("Number of items in AdditionalVersionWeights cannot be greater than 1")
        )
    elif function_version == "$LATEST":
        own.defer(
            InvalidParameterValue("$LATEST is not supported for an alias pointing to more than 1 version")
        )
    elif function_version is not None and function_version in weights:
        own.defer(
            InvalidParameterValue(
                f"Invalid function version {function_version}. Function version {function_version} "
                "is already included in routing configuration."
            )
        )
    _done(own, violations)


# --------------------------------------------------------------------------------------------
# Tags, permissions, concurrency
# --------------------------------------------------------------------------------------------

MAX_TAGS = 50


def validate_tags(
    tags: Mapping[str, str] | None,
    *,
    existing: Iterable[str] = (),
    tag_resource: bool = False,
    violations: Violations | None = None,
) -> None:
    """Tags of CreateFunction / TagResource. ``existing``: keys already on the resource.

    The key/value length rules (1-128 / 0-256, no ``aws:`` prefix) are AWS's documented limits; AWS's
    exact messages for them are not recorded, so these use the model-constraint form.
    """
    own = _sink(violations)
    if tag_resource and not tags:
        own.defer(InvalidParameterValue("An error occurred and the request cannot be processed."))
        _done(own, violations)
        return
    tags = tags or {}
    if any(not 1 <= len(java_str(k)) <= 128 for k in tags):
        own.add("tags", dict(tags), f"Map keys must satisfy constraint: [{_len_max(128)}, {_len_min(1)}]")
    elif any(len(java_str(v)) > 256 for v in tags.values()):
        own.add("tags", dict(tags), f"Map value must satisfy constraint: [{_len_max(256)}]")
    elif len(set(existing) | set(tags)) > MAX_TAGS:
        own.defer(InvalidParameterValue("Number of tags exceeds resource tag limit."))
    elif any(java_str(k).lower().startswith("aws:") for k in tags):
        own.defer(InvalidParameterValue("Tag keys cannot start with the reserved prefix 'aws:'."))
    _done(own, violations)


def validate_statement_id(sid: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if len(sid) > 100:
        own.add("statementId", sid, _len_max(100))
    if not _STATEMENT_ID_RE.fullmatch(sid):
        own.add("statementId", sid, _pattern(STATEMENT_ID_PATTERN))
    _done(own, violations)


def validate_action(action: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if not _ACTION_RE.fullmatch(action):
        own.add("action", action, _pattern(ACTION_PATTERN))
    _done(own, violations)


def validate_layer_action(action: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if action != "lambda:GetLayerVersion":
        own.add("action", action, _pattern(LAYER_ACTION_PATTERN))
    _done(own, violations)


_SERVICE_PRINCIPAL_RE = _full(r"[a-z0-9*]([a-z0-9.*-]*[a-z0-9])?\.amazonaws\.com(\.cn)?")
_ACCOUNT_RE = _full(r"\d{12}")
_IAM_ARN_RE = _full(r"arn:aws[a-zA-Z-]*:iam::\d{12}:\S+")


def principal_kind(principal: str) -> str | None:
    """``"*"``, ``"account"``, ``"arn"`` (an IAM ARN) or ``"service"``; None when AWS refuses it."""
    if principal == "*":
        return "*"
    if _ACCOUNT_RE.fullmatch(principal):
        return "account"
    if _IAM_ARN_RE.fullmatch(principal):
        return "arn"
    if _SERVICE_PRINCIPAL_RE.fullmatch(principal):
        return "service"
    return None


def validate_principal(principal: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if not _PRINCIPAL_RE.fullmatch(principal):
        own.add("principal", principal, _pattern(PRINCIPAL_PATTERN))
    elif principal_kind(principal) is None:
        own.defer(
            InvalidParameterValue(
                "The provided principal was invalid. Please check the principal and try again."
            )
        )
    _done(own, violations)


def validate_reserved_concurrency(
    value: Any,
    *,
    account_limit: int = 1000,
    unreserved_minimum: int = 100,
    reserved_elsewhere: int = 0,
    violations: Violations | None = None,
) -> None:
    """PutFunctionConcurrency: >= 0, and the account keeps ``unreserved_minimum`` unreserved.

    ``reserved_elsewhere``: the sum reserved by the account's *other* functions.
    """
    own = _sink(violations)
    before = len(own)
    _int_range(own, "reservedConcurrentExecutions", value, 0, None)
    if len(own) == before and account_limit - reserved_elsewhere - value < unreserved_minimum:
        own.defer(
            InvalidParameterValue(
                "Specified ReservedConcurrentExecutions for function decreases account's "
                f"UnreservedConcurrentExecution below its minimum value of [{unreserved_minimum}]."
            )
        )
    _done(own, violations)


# --------------------------------------------------------------------------------------------
# Function URLs
# --------------------------------------------------------------------------------------------


def validate_url_auth_type(auth_type: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if auth_type not in ("NONE", "AWS_IAM"):
        own.add("authType", auth_type, _enum(("AWS_IAM", "NONE")))
    _done(own, violations)


def validate_invoke_mode(mode: str, violations: Violations | None = None) -> None:
    own = _sink(violations)
    if mode not in ("BUFFERED", "RESPONSE_STREAM"):
        own.add("invokeMode", mode, _enum(("RESPONSE_STREAM", "BUFFERED")))
    _done(own, violations)


def validate_cors(cors: Mapping[str, Any], violations: Violations | None = None) -> None:
    """The model limits of a function URL's Cors block."""
    own = _sink(violations)
    origins = cors.get("AllowOrigins")
    if origins is not None:
        if len(origins) > 100:
            own.add("cors.allowOrigins", list(origins), _len_max(100))
        elif any(not 1 <= len(o) <= 253 for o in origins):
            own.add(
                "cors.allowOrigins",
                list(origins),
                f"Member must satisfy constraint: [{_len_max(253)}, {_len_min(1)}, "
                f"{_pattern('.*')}, Member must not be null]",
            )
    methods = cors.get("AllowMethods")
    if methods is not None:
        if len(methods) > 6:
            own.add("cors.allowMethods", list(methods), _len_max(6))
        elif any(len(m) > 6 for m in methods):
            own.add(
                "cors.allowMethods",
                list(methods),
                f"Member must satisfy constraint: [{_len_max(6)}, {_len_min(0)}, "
                f"{_pattern('.*')}, Member must not be null]",
            )
    for key, field in (("AllowHeaders", "cors.allowHeaders"), ("ExposeHeaders", "cors.exposeHeaders")):
        headers = cors.get(key)
        if headers is None:
            continue
        if len(headers) > 100:
            own.add(field, list(headers), _len_max(100))
        elif any(len(h) > 1024 for h in headers):
            own.add(
                field,
                list(headers),
                f"Member must satisfy constraint: [{_len_max(1024)}, {_len_min(0)}, "
                f"{_pattern('.*')}, Member must not be null]",
            )
    max_age = cors.get("MaxAge")
    if max_age is not None:
        _int_range(own, "cors.maxAge", max_age, 0, 86400)
    _done(own, violations)


def validate_function_version_param(value: str, violations: Violations | None = None) -> None:
    """ListFunctions' ``FunctionVersion`` (recorded: ``test_list_functions``)."""
    own = _sink(violations)
    if value != "ALL":
        own.add("functionVersion", value, _enum(("ALL",)))
    _done(own, violations)
