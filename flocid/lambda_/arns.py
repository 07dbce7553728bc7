"""Function names, ARNs and qualifiers, parsed as AWS parses them. Sans-IO.

``FunctionName`` in the Lambda API takes four spellings: ``name``, ``name:qualifier``, the partial
ARN ``123456789012:function:name[:qualifier]`` and the full ARN
``arn:aws:lambda:<region>:<account>:function:name[:qualifier]``. :func:`parse_function_name` turns
any of them (plus the separate ``Qualifier`` parameter) into a :class:`FunctionRef`, raising AWS's
errors in AWS's order (``aws-recorded-errors.txt``, ``TestLambdaFunction::test_function_arns``,
``test_get_function_wrong_region``, ``test_ops_with_arn_qualifier_mismatch``; peers.md 1.10 items
8-10):

1. an ARN of another account: 403 AccessDeniedException, message null;
2. an ARN of another region: 404 "Functions from '<r>' are not reachable in this region ('<r2>')";
3. length and pattern (one ValidationException listing both, with the ``Qualifier`` parameter's
   own problems); a plain name over 64 characters at creation is AWS's odd
   InvalidParameterValueException with the validation-error text;
4. a qualifier in the name that differs from ``Qualifier``: InvalidParameterValueException
   "The derived qualifier from the function name does not match the specified qualifier.";
5. a qualifier where the operation takes none (``allow_qualifier=False``).

Imports nothing of flocid but the error tree, the models' ARN builder and validation.
"""

from __future__ import annotations

import re
from typing import Literal

import attrs

from flocid.lambda_.errors import (
    AccessDenied,
    InvalidParameterValue,
    ResourceNotFound,
    ValidationError,
)
from flocid.lambda_.models import LATEST, function_arn
from flocid.lambda_.validation import (
    FUNCTION_NAME_PATTERN,
    NAMESPACED_FUNCTION_NAME_PATTERN,
    REGION_RE,
    Violations,
    alias_name_valid,
    validate_qualifier,
)

#: PutFunctionConcurrency and friends on a qualified name (peers.md 1.10 item 25).
FUNCTIONS_ONLY_MESSAGE = (
    "This operation is permitted on Lambda functions only. Aliases and versions do not support this "
    "operation. Please specify either a function name or an unqualified function ARN."
)
#: TagResource/UntagResource/ListTags on a version or alias ARN.
TAGS_ON_QUALIFIED_MESSAGE = (
    "Tags on function aliases and versions are not supported. Please specify a function ARN."
)
QUALIFIER_MISMATCH_MESSAGE = (
    "The derived qualifier from the function name does not match the specified qualifier."
)

MAX_NAME_LENGTH = 64
MAX_ARN_LENGTH = 140

_NAME_RE = re.compile(
    r"(?:arn:(?P<partition>aws[a-zA-Z-]*)?:lambda:)?(?:(?P<region>" + REGION_RE + r"):)?"
    r"(?:(?P<account>\d{12}):)?(?:function:)?(?P<name>[a-zA-Z0-9_-]+)"
    r"(?::(?P<qualifier>\$LATEST|[a-zA-Z0-9_-]+))?",
    re.ASCII,
)
_NAMESPACED_NAME_RE = re.compile(
    r"(?:arn:(?P<partition>aws[a-zA-Z-]*)?:lambda:)?(?:(?P<region>" + REGION_RE + r"):)?"
    r"(?:(?P<account>\d{12}):)?(?:function:)?(?P<name>[a-zA-Z0-9_.-]+)"
    r"(?::(?P<qualifier>\$LATEST(?:\.PUBLISHED)?|[a-zA-Z0-9_-]+))?",
    re.ASCII,
)
_VERSION_RE = re.compile(r"[0-9]+", re.ASCII)


@attrs.frozen
class FunctionRef:
    """A function as a request names it: its name, the qualifier asked for (None: unqualified)."""

    name: str
    qualifier: str | None
    region: str
    account: str

    @property
    def arn(self) -> str:
        """Qualified when a qualifier was given, else unqualified."""
        return function_arn(self.region, self.account, self.name, self.qualifier)

    @property
    def unqualified_arn(self) -> str:
        return function_arn(self.region, self.account, self.name)

    @property
    def latest_arn(self) -> str:
        """``<arn>:$LATEST`` when unqualified: what Invoke's "Function not found" quotes."""
        return function_arn(self.region, self.account, self.name, self.qualifier or LATEST)


def parse_function_name(
    value: str,
    *,
    region: str,
    account: str,
    qualifier: str | None = None,
    allow_qualifier: bool = True,
    creating: bool = False,
    namespaced: bool = False,
    allow_other_account: bool = False,
    qualified_message: str = FUNCTIONS_ONLY_MESSAGE,
) -> FunctionRef:
    """Parse ``FunctionName`` (+ the ``Qualifier`` parameter) for a request in ``region``/``account``.

    ``creating``: CreateFunction, where a plain name over 64 characters is an
    InvalidParameterValueException. ``namespaced``: Invoke's pattern (dots in names,
    ``$LATEST.PUBLISHED``). ``allow_other_account``: skip the 403 for resource-policy operations
    once cross-account access is modelled. ``qualified_message``: the InvalidParameterValue raised
    when ``allow_qualifier`` is False and a qualifier is present (see :data:`TAGS_ON_QUALIFIED_MESSAGE`).
    """
    pattern_text = NAMESPACED_FUNCTION_NAME_PATTERN if namespaced else FUNCTION_NAME_PATTERN
    regex = _NAMESPACED_NAME_RE if namespaced else _NAME_RE
    match = regex.fullmatch(value)
    plain = match is not None and match["name"] == value

    if match is not None:
        # AWS answers a foreign account or region before it looks at lengths.
        if match["account"] and match["account"] != account and not allow_other_account:
            raise AccessDenied(None)
        if match["region"] and match["region"] != region:
            raise ResourceNotFound(
                f"Functions from '{match['region']}' are not reachable in this region ('{region}')"
            )

    if qualifier == "":
        qualifier = None
    violations = Violations()
    max_length = MAX_NAME_LENGTH if (creating and plain) else MAX_ARN_LENGTH
    if not value:
        violations.add("functionName", value, "Member must have length greater than or equal to 1")
    if len(value) > max_length:
        violations.add("functionName", value, f"Member must have length less than or equal to {max_length}")
    if match is None:
        violations.add(
            "functionName", value, f"Member must satisfy regular expression pattern: {pattern_text}"
        )
    if qualifier is not None:
        validate_qualifier(qualifier, violations)
    if violations:
        violations.raise_if_any(InvalidParameterValue if (creating and plain) else ValidationError)
    assert match is not None

    name = match["name"]
    if creating and len(name) > MAX_NAME_LENGTH:
        # A (partial) ARN whose name part is too long but whose whole is within 140.
        violations.add(
            "functionName", value, f"Member must have length less than or equal to {MAX_NAME_LENGTH}"
        )
        violations.raise_if_any(InvalidParameterValue)

    arn_qualifier = match["qualifier"]
    if qualifier is not None and arn_qualifier is not None and qualifier != arn_qualifier:
        raise InvalidParameterValue(QUALIFIER_MISMATCH_MESSAGE)
    final = qualifier if qualifier is not None else arn_qualifier
    if final is not None and not allow_qualifier:
        raise InvalidParameterValue(qualified_message)
    return FunctionRef(name=name, qualifier=final, region=region, account=account)


# --------------------------------------------------------------------------------------------
# Qualifier kinds
# --------------------------------------------------------------------------------------------

QualifierKind = Literal["latest", "version", "alias"]


def is_latest(qualifier: str | None) -> bool:
    """No qualifier means ``$LATEST`` too."""
    return qualifier is None or qualifier == LATEST


def is_version_number(qualifier: str | None) -> bool:
    return qualifier is not None and bool(_VERSION_RE.fullmatch(qualifier))


def is_alias(qualifier: str | None) -> bool:
    return qualifier is not None and qualifier != LATEST and alias_name_valid(qualifier)


def qualifier_kind(qualifier: str | None) -> QualifierKind:
    """Which kind of target a (syntactically valid) qualifier names."""
    if is_latest(qualifier):
        return "latest"
    if is_version_number(qualifier):
        return "version"
    return "alias"


# --------------------------------------------------------------------------------------------
# Layer version ARNs
# --------------------------------------------------------------------------------------------

LAYER_ARN_PATTERN_GET = (
    r"(arn:(aws[a-zA-Z-]*)?:lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:layer:"
    r"[a-zA-Z0-9-_]+:[0-9]+)|(arn:[a-zA-Z0-9-]+:lambda:::awslayer:[a-zA-Z0-9-_]+)"
)
_LAYER_VERSION_ARN_RE = re.compile(
    r"arn:(?P<partition>aws[a-zA-Z-]*)?:lambda:(?P<region>" + REGION_RE + r"):(?P<account>\d{12}):"
    r"layer:(?P<name>[a-zA-Z0-9_-]+):(?P<version>[0-9]+)",
    re.ASCII,
)


@attrs.frozen
class LayerVersionRef:
    name: str
    version: int
    region: str
    account: str

    @property
    def layer_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:layer:{self.name}"

    @property
    def arn(self) -> str:
        return f"{self.layer_arn}:{self.version}"


def parse_layer_version_arn(value: str, *, field: str = "arn") -> LayerVersionRef:
    """A layer version ARN (GetLayerVersionByArn; recorded as ``/get_layer_version_by_arn_exc_invalidarn``).

    A version of 0 is syntactically fine here; the caller answers "Layer Version Cannot be less than 1".
    """
    m = _LAYER_VERSION_ARN_RE.fullmatch(value)
    if m is None or len(value) > MAX_ARN_LENGTH:
        v = Violations()
        if len(value) > MAX_ARN_LENGTH:
            v.add(field, value, f"Member must have length less than or equal to {MAX_ARN_LENGTH}")
        if m is None:
            v.add(field, value, f"Member must satisfy regular expression pattern: {LAYER_ARN_PATTERN_GET}")
        v.raise_if_any()
    assert m is not None
    return LayerVersionRef(
        name=m["name"], version=int(m["version"]), region=m["region"], account=m["account"]
    )


# --------------------------------------------------------------------------------------------
# Taggable resource ARNs (TagResource / UntagResource / ListTags)
# --------------------------------------------------------------------------------------------

TAGGABLE_RESOURCE_PATTERN = (
    r"arn:(aws[a-zA-Z-]*):lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:"
    r"(function:[a-zA-Z0-9-_]+(:(\$LATEST|[a-zA-Z0-9-_]+))?|layer:([a-zA-Z0-9-_]+)|"
    r"code-signing-config:csc-[a-z0-9]{17}|event-source-mapping:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|capacity-provider:[a-zA-Z0-9-_]+)"
)
_TAGGABLE_RE = re.compile(
    r"arn:(?P<partition>aws[a-zA-Z-]*):lambda:(?P<region>" + REGION_RE + r"):(?P<account>\d{12}):"
    r"(?:function:(?P<function>[a-zA-Z0-9_-]+)(?::(?P<qualifier>\$LATEST|[a-zA-Z0-9_-]+))?"
    r"|layer:(?P<layer>[a-zA-Z0-9_-]+)"
    r"|code-signing-config:(?P<csc>csc-[a-z0-9]{17})"
    r"|event-source-mapping:(?P<esm>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
    r"[0-9a-fA-F]{12})"
    r"|capacity-provider:(?P<cp>[a-zA-Z0-9_-]+))",
    re.ASCII,
)

ResourceKind = Literal["function", "layer", "code-signing-config", "event-source-mapping", "capacity-provider"]


@attrs.frozen
class ResourceRef:
    kind: ResourceKind
    id: str
    region: str
    account: str


def parse_taggable_arn(value: str) -> ResourceRef:
    """The ``Resource`` of the tag operations (recorded: ``TestLambdaTag::test_tag_exceptions``).

    A function ARN with a qualifier (``$LATEST`` included) is AWS's InvalidParameterValueException
    "Tags on function aliases and versions are not supported. Please specify a function ARN."
    """
    m = _TAGGABLE_RE.fullmatch(value)
    if m is None or len(value) > 256:
        v = Violations()
        if len(value) > 256:
            v.add("resource", value, "Member must have length less than or equal to 256")
        if m is None:
            v.add("resource", value, f"Member must satisfy regular expression pattern: {TAGGABLE_RESOURCE_PATTERN}")
        v.raise_if_any()
    assert m is not None
    if m["function"]:
        if m["qualifier"] is not None:
            raise InvalidParameterValue(TAGS_ON_QUALIFIED_MESSAGE)
        kind: ResourceKind = "function"
        ident = m["function"]
    elif m["layer"]:
        kind, ident = "layer", m["layer"]
    elif m["csc"]:
        kind, ident = "code-signing-config", m["csc"]
    elif m["esm"]:
        kind, ident = "event-source-mapping", m["esm"]
    else:
        kind, ident = "capacity-provider", m["cp"]
    return ResourceRef(kind=kind, id=ident, region=m["region"], account=m["account"])


#: The brief's name for :func:`parse_layer_version_arn`.
parse_layer_arn = parse_layer_version_arn
