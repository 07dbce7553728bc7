"""Lambda records: what a function version, an alias, a URL config are. Plain attrs, no I/O.

A ``FunctionConfig`` is one version of a function: ``$LATEST`` or a published number. Published
versions are frozen copies of ``$LATEST`` at publish time, code included (``code_id`` names the
content-addressed code in the code store, so a later update of ``$LATEST`` never changes them).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import attrs

LATEST = "$LATEST"
PARTITION = "aws"


def function_arn(region: str, account: str, name: str, qualifier: str | None = None) -> str:
    arn = f"arn:{PARTITION}:lambda:{region}:{account}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def aws_timestamp(when: _dt.datetime | None = None) -> str:
    """``LastModified`` as AWS writes it: ``2026-08-22T04:22:32.123+0000``."""
    when = when or _dt.datetime.now(_dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}+0000"


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if value is not None else ()


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if value else {}


@attrs.frozen(kw_only=True)
class FunctionConfig:
    """One version of a function: everything GetFunctionConfiguration shows, plus where its code is."""

    name: str
    region: str
    account: str
    version: str = LATEST
    role: str
    runtime: str | None = None
    handler: str | None = None
    description: str = ""
    timeout: int = 3
    memory_size: int = 128
    ephemeral_storage: int = 512
    architectures: tuple[str, ...] = attrs.field(default=("x86_64",), converter=_tuple)
    environment: dict[str, str] = attrs.field(factory=dict, converter=_dict)
    tracing_mode: str = "PassThrough"
    layers: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    package_type: str = "Zip"
    #: base64(sha256(zip)) as AWS reports it ("" for images); ``code_id`` is the store key (hex).
    code_sha256: str = ""
    code_size: int = 0
    code_id: str | None = None
    image_uri: str | None = None
    image_config: dict[str, Any] = attrs.field(factory=dict, converter=_dict)
    logging_config: dict[str, Any] = attrs.field(factory=dict, converter=_dict)
    dead_letter_target: str | None = None
    kms_key_arn: str | None = None
    vpc_config: dict[str, Any] = attrs.field(factory=dict, converter=_dict)
    file_system_configs: tuple[dict[str, Any], ...] = attrs.field(default=(), converter=_tuple)
    snap_start: dict[str, Any] = attrs.field(factory=dict, converter=_dict)
    last_modified: str = attrs.field(factory=aws_timestamp)
    revision_id: str
    state: str = "Active"
    state_reason: str | None = None
    state_reason_code: str | None = None
    #: S3 origin of the code (bucket, key, version) when created from S3.
    s3_origin: dict[str, Any] = attrs.field(factory=dict, converter=_dict)
    #: Hot reload: the host directory mounted at /var/task (every invoke a fresh environment).
    hot_reload_path: str | None = None

    @property
    def arn(self) -> str:
        """The unqualified ARN for $LATEST, the version-qualified ARN for published versions."""
        return function_arn(
            self.region, self.account, self.name, None if self.version == LATEST else self.version
        )

    @property
    def unqualified_arn(self) -> str:
        return function_arn(self.region, self.account, self.name)

    @property
    def log_group(self) -> str:
        return self.logging_config.get("LogGroup") or f"/aws/lambda/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False, value_serializer=_ser)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FunctionConfig:
        return cls(**data)


def _ser(_inst: Any, _field: Any, value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@attrs.frozen(kw_only=True)
class Alias:
    name: str
    function_name: str
    region: str
    account: str
    function_version: str
    description: str = ""
    #: version -> weight, at most one entry (AWS).
    routing: dict[str, float] = attrs.field(factory=dict, converter=_dict)
    revision_id: str

    @property
    def arn(self) -> str:
        return function_arn(self.region, self.account, self.function_name, self.name)

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alias:
        return cls(**data)


@attrs.frozen(kw_only=True)
class UrlConfig:
    function_name: str
    region: str
    account: str
    qualifier: str | None
    url_id: str
    auth_type: str
    invoke_mode: str | None = None
    cors: dict[str, Any] = attrs.field(factory=dict, converter=_dict)
    creation_time: str
    last_modified_time: str

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UrlConfig:
        return cls(**data)
