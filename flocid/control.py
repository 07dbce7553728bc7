"""The Lambda control plane: the domain's rules applied to live state, persisted through the store.

Live state is held in memory (so Invoke resolves a target without touching the disk) and every
change is written through to the store in one transaction before it becomes visible. All changes
are serialised by one lock; reads take none.

Requests and responses are AWS's JSON shapes (dicts); the HTTP layer only moves them on and off the
wire. Errors are the classes of ``flocid.lambda_.errors``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from flocid.config import Settings
from flocid.lambda_ import validation as v
from flocid.lambda_.arns import FunctionRef, parse_function_name
from flocid.lambda_.errors import (
    InvalidParameterValue,
    InvalidRequestContent,
    PreconditionFailed,
    ResourceConflict,
    ResourceNotFound,
    ValidationError,
)
from flocid.lambda_.models import LATEST, Alias, FunctionConfig, UrlConfig, aws_timestamp, function_arn
from flocid.state.codestore import CodeStore, StoredCode
from flocid.state.store import Delete, Op, Put, Store

Body = dict[str, Any]
log = logging.getLogger("flocid.control")


class S3Source(Protocol):
    async def get_s3_object(self, bucket: str, key: str, version: str | None = None) -> bytes: ...


class ImageSource(Protocol):
    async def has_image(self, image: str) -> bool: ...

    async def ensure_image(self, image: str) -> None: ...

#: With hot reload enabled, this S3Bucket makes S3Key a host directory bind-mounted at /var/task.
HOT_RELOAD_BUCKET = "hot-reload"
#: CodeSha256 of a hot-reload function: no zip exists to hash (LocalStack's value, kept for tools
#: that already know it).
HOT_RELOAD_SHA = "hot-reloading-hash-not-available"

REVISION_MISMATCH = (
    "The Revision Id provided does not match the latest Revision Id. "
    "Call the GetFunction/GetAlias API to retrieve the latest Revision Id"
)
POLICY_REVISION_MISMATCH = (
    "The Revision Id provided does not match the latest Revision Id. "
    "Call the GetPolicy API to retrieve the latest Revision Id"
)


@attrs.frozen
class Ctx:
    """Who asks: the region (from the SigV4 scope) and the account."""

    region: str
    account: str


@attrs.define
class FunctionState:
    """Everything attached to one function, in memory."""

    latest: FunctionConfig
    versions: dict[str, FunctionConfig] = attrs.field(factory=dict)
    next_version: int = 1
    aliases: dict[str, Alias] = attrs.field(factory=dict)
    #: qualifier ("" = unqualified) -> {"revision": str, "statements": [..]}
    policies: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    url_configs: dict[str, UrlConfig] = attrs.field(factory=dict)
    tags: dict[str, str] = attrs.field(factory=dict)
    reserved: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.latest.region, self.latest.account, self.latest.name)

    def meta(self) -> Body:
        return {"next_version": self.next_version}


def _new_revision() -> str:
    return str(uuid.uuid4())


def _fn_key(fn: FunctionConfig) -> tuple[str, str, str, str]:
    return (fn.region, fn.account, fn.name, fn.version)


# ---------------------------------------------------------------------------------------------
# Request shapes: field -> python type. Unknown fields and wrong types are refused as AWS's Jackson
# deserializer does (InvalidRequestContentException "Could not parse request body into json: ...").

_CREATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "FunctionName": str, "Runtime": str, "Role": str, "Handler": str, "Code": dict,
    "Description": str, "Timeout": int, "MemorySize": int, "Publish": bool, "VpcConfig": dict,
    "PackageType": str, "DeadLetterConfig": dict, "Environment": dict, "KMSKeyArn": str,
    "TracingConfig": dict, "Tags": dict, "Layers": list, "FileSystemConfigs": list,
    "ImageConfig": dict, "CodeSigningConfigArn": str, "Architectures": list,
    "EphemeralStorage": dict, "SnapStart": dict, "LoggingConfig": dict,
    "RuntimeManagementConfig": dict, "PublishTo": str,
}
_UPDATE_CONFIG_FIELDS: dict[str, type | tuple[type, ...]] = {
    k: t for k, t in _CREATE_FIELDS.items()
    if k not in ("FunctionName", "Code", "Publish", "PackageType", "Tags", "CodeSigningConfigArn",
                 "Architectures", "PublishTo")
} | {"RevisionId": str}
_UPDATE_CODE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "ZipFile": str, "S3Bucket": str, "S3Key": str, "S3ObjectVersion": str, "ImageUri": str,
    "Publish": bool, "DryRun": bool, "RevisionId": str, "Architectures": list, "PublishTo": str,
    "SourceKMSKeyArn": str,
}
_PUBLISH_FIELDS: dict[str, type | tuple[type, ...]] = {
    "CodeSha256": str, "Description": str, "RevisionId": str, "PublishTo": str,
}
_ALIAS_FIELDS: dict[str, type | tuple[type, ...]] = {
    "Name": str, "FunctionVersion": str, "Description": str, "RoutingConfig": dict, "RevisionId": str,
}
_PERMISSION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "StatementId": str, "Action": str, "Principal": str, "SourceArn": str, "SourceAccount": str,
    "EventSourceToken": str, "RevisionId": str, "PrincipalOrgID": str, "FunctionUrlAuthType": str,
    "InvokedViaFunctionUrl": bool,
}
_URL_FIELDS: dict[str, type | tuple[type, ...]] = {"AuthType": str, "Cors": dict, "InvokeMode": str}
_CONCURRENCY_FIELDS: dict[str, type | tuple[type, ...]] = {"ReservedConcurrentExecutions": int}
_TAG_FIELDS: dict[str, type | tuple[type, ...]] = {"Tags": dict}

# Scalar configuration fields: request field, FunctionConfig attribute, validator.
_SIMPLE_FIELDS: tuple[tuple[str, str, Callable[..., None]], ...] = (
    ("Handler", "handler", v.validate_handler),
    ("Role", "role", v.validate_role),
    ("Description", "description", v.validate_description),
    ("Timeout", "timeout", v.validate_timeout),
    ("MemorySize", "memory_size", v.validate_memory_size),
)

_TYPE_NAMES = {str: "java.lang.String", int: "java.lang.Integer", bool: "java.lang.Boolean",
               dict: "java.util.Map", list: "java.util.List"}


def require(body: Body, *fields: str) -> None:
    """AWS's answer to a missing required member: "Value null at 'x' ... must not be null"."""
    for field in fields:
        if field not in body:
            lc = field[0].lower() + field[1:]
            raise ValidationError(
                f"1 validation error detected: Value null at '{lc}' failed to satisfy constraint: "
                "Member must not be null"
            )


def check_fields(body: Any, schema: dict[str, type | tuple[type, ...]]) -> Body:
    """Refuse bodies that AWS's deserializer refuses: not an object, unknown fields, wrong types."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidRequestContent(
            "Could not parse request body into json: Cannot deserialize value from a non-object"
        )
    for key, value in body.items():
        want = schema.get(key)
        if want is None:
            raise InvalidRequestContent(
                f'Could not parse request body into json: Unrecognized field "{key}", not marked as ignorable'
            )
        if value is None:
            continue
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if not ok:
            tname = _TYPE_NAMES.get(want if isinstance(want, type) else want[0], "value")
            raise InvalidRequestContent(
                f"Could not parse request body into json: Cannot deserialize value of type `{tname}` "
                f"from {json.dumps(value)[:64]} (field \"{key}\")"
            )
    return {k: val for k, val in body.items() if val is not None}


class ControlPlane:
    """Every control-plane operation of the Lambda API."""

    def __init__(self, settings: Settings, store: Store, code: CodeStore) -> None:
        self.settings = settings
        self.store = store
        self.code = code
        self.functions: dict[tuple[str, str, str], FunctionState] = {}
        self._lock = trio.Lock()
        #: Called with (region, account, name, version or None for all) when code/config of a
        #: function changes or it is deleted; the invoke layer drains its warm environments.
        self.on_change: list[Callable[[str, str, str, str | None], None]] = []
        #: Set by the daemon: tells whether an image is present and fetches it (the executor).
        self.image_source: ImageSource | None = None
        #: Set by the daemon: where background work of the control plane runs (image fetches).
        self.background: trio.Nursery | None = None
        #: Set by the daemon: the embedded S3, for code from S3 and its reactive sync.
        self.s3: S3Source | None = None
        #: Functions whose code is being re-read after their S3 object changed -> set when done.
        self._syncing: dict[tuple[str, str, str], trio.Event] = {}
        self._sync_send, self._sync_receive = trio.open_memory_channel[tuple[str, str, str | None]](1000)
        self._load()

    def pending_images(self) -> list[tuple[str, str, str, str]]:
        """Functions left Pending on their image by an earlier run: (region, account, name, image)."""
        return [(st.latest.region, st.latest.account, st.latest.name, st.latest.image_uri)
                for st in self.functions.values()
                if st.latest.state == "Pending" and st.latest.image_uri]

    # ---- loading -----------------------------------------------------------------------------

    def _load(self) -> None:
        latest: dict[tuple[str, str, str], FunctionConfig] = {}
        versions: dict[tuple[str, str, str], dict[str, FunctionConfig]] = {}
        for key, body in self.store.rows("functions"):
            fn = FunctionConfig.from_json(body)
            k3 = (key[0], key[1], key[2])
            if fn.version == LATEST:
                latest[k3] = fn
            else:
                versions.setdefault(k3, {})[fn.version] = fn
        for k3, fn in latest.items():
            self.functions[k3] = FunctionState(latest=fn, versions=versions.get(k3, {}))
        # Everything else attached to a function: table -> how a row lands on its FunctionState.
        attach: dict[str, Callable[[FunctionState, tuple[str, ...], Any], None]] = {
            "function_meta": lambda st, k, b: setattr(st, "next_version", int(b["next_version"])),
            "aliases": lambda st, k, b: st.aliases.__setitem__(k[3], Alias.from_json(b)),
            "policies": lambda st, k, b: st.policies.__setitem__(k[3], b),
            "url_configs": lambda st, k, b: st.url_configs.__setitem__(k[3], UrlConfig.from_json(b)),
            "tags": lambda st, k, b: setattr(st, "tags", dict(b)),
            "concurrency": lambda st, k, b: setattr(st, "reserved", int(b["reserved"])),
        }
        for table, put in attach.items():
            for key, body in self.store.rows(table):
                st = self.functions.get((key[0], key[1], key[2]))
                if st is not None:
                    put(st, key, body)

    def referenced_code(self) -> set[str]:
        out: set[str] = set()
        for st in self.functions.values():
            for fn in (st.latest, *st.versions.values()):
                if fn.code_id:
                    out.add(fn.code_id)
        return out

    async def _commit(self, ops: list[Op]) -> None:
        await trio.to_thread.run_sync(self.store.write, ops)

    def _changed(self, fn: FunctionConfig, version: str | None) -> None:
        for cb in self.on_change:
            cb(fn.region, fn.account, fn.name, version)

    # ---- lookups -----------------------------------------------------------------------------

    def ref(self, ctx: Ctx, name: str, qualifier: str | None = None, *, invoke: bool = False) -> FunctionRef:
        return parse_function_name(
            name, region=ctx.region, account=ctx.account, qualifier=qualifier, namespaced=invoke
        )

    def state(self, ref: FunctionRef, *, message: str | None = None) -> FunctionState:
        st = self.functions.get((ref.region, ref.account, ref.name))
        if st is None:
            raise ResourceNotFound(
                message or f"Function not found: {function_arn(ref.region, ref.account, ref.name)}"
            )
        return st

    def resolve(self, ref: FunctionRef, *, latest_suffix: bool = False) -> tuple[FunctionState, FunctionConfig, Alias | None]:
        """Find the version a (name, qualifier) names; an alias resolves to its primary version."""
        q = ref.qualifier
        not_found = function_arn(ref.region, ref.account, ref.name, q or (LATEST if latest_suffix else None))
        st = self.functions.get((ref.region, ref.account, ref.name))
        if st is None:
            raise ResourceNotFound(f"Function not found: {not_found}")
        if q is None or q == LATEST:
            return st, st.latest, None
        if q.isdigit():
            fn = st.versions.get(q)
            if fn is None:
                raise ResourceNotFound(f"Function not found: {not_found}")
            return st, fn, None
        alias = st.aliases.get(q)
        if alias is None:
            raise ResourceNotFound(f"Function not found: {not_found}")
        target = st.latest if alias.function_version == LATEST else st.versions[alias.function_version]
        return st, target, alias

    # ---- rendering ---------------------------------------------------------------------------

    def render_config(self, fn: FunctionConfig, *, arn: str | None = None) -> Body:
        out: Body = {
            "FunctionName": fn.name,
            "FunctionArn": arn or fn.arn,
        }
        if fn.package_type == "Zip":
            if fn.runtime:
                out["Runtime"] = fn.runtime
        out["Role"] = fn.role
        if fn.handler is not None:
            out["Handler"] = fn.handler
        out.update(
            {
                "CodeSize": fn.code_size,
                "Description": fn.description,
                "Timeout": fn.timeout,
                "MemorySize": fn.memory_size,
                "LastModified": fn.last_modified,
                "CodeSha256": fn.code_sha256,
                "Version": fn.version,
            }
        )
        if fn.vpc_config:
            out["VpcConfig"] = fn.vpc_config
        out["Environment"] = {"Variables": dict(fn.environment)}
        out["TracingConfig"] = {"Mode": fn.tracing_mode}
        out["RevisionId"] = fn.revision_id
        if fn.layers:
            out["Layers"] = [{"Arn": arn_, "CodeSize": 0} for arn_ in fn.layers]
        out["State"] = fn.state
        if fn.state_reason:
            out["StateReason"] = fn.state_reason
        if fn.state_reason_code:
            out["StateReasonCode"] = fn.state_reason_code
        out["LastUpdateStatus"] = "Successful"
        out["PackageType"] = fn.package_type
        out["Architectures"] = list(fn.architectures)
        out["EphemeralStorage"] = {"Size": fn.ephemeral_storage}
        out["SnapStart"] = {
            "ApplyOn": fn.snap_start.get("ApplyOn", "None"),
            "OptimizationStatus": "Off",
        }
        out["LoggingConfig"] = {
            "LogFormat": fn.logging_config.get("LogFormat", "Text"),
            "LogGroup": fn.log_group,
            **{k: val for k, val in fn.logging_config.items() if k not in ("LogFormat", "LogGroup")},
        }
        if fn.package_type == "Image":
            out["ImageConfigResponse"] = (
                {"ImageConfig": dict(fn.image_config)} if fn.image_config else {}
            )
        if fn.dead_letter_target:
            out["DeadLetterConfig"] = {"TargetArn": fn.dead_letter_target}
        if fn.kms_key_arn:
            out["KMSKeyArn"] = fn.kms_key_arn
        if fn.file_system_configs:
            out["FileSystemConfigs"] = [dict(c) for c in fn.file_system_configs]
        return out

    # ---- functions ---------------------------------------------------------------------------

    def _config_from(self, ctx: Ctx, body: Body, base: FunctionConfig | None, *, creating: bool) -> dict[str, Any]:
        """Validate the configuration fields of Create/UpdateFunctionConfiguration; return changes."""
        ch: dict[str, Any] = {}
        package_type = body.get("PackageType", base.package_type if base else "Zip")
        # One collector for all fields: AWS reports every model violation of a request at once
        # ("2 validation errors detected: ...; ...").
        found = v.Violations()
        for field, attr, check in _SIMPLE_FIELDS:
            if field in body:
                check(body[field], violations=found)
                ch[attr] = body[field]
        if "Runtime" in body:
            v.validate_runtime(body["Runtime"], creating=creating, violations=found)
            ch["runtime"] = body["Runtime"]
        if "Environment" in body:
            variables = body["Environment"].get("Variables") or {}
            v.validate_environment(variables, violations=found)
            ch["environment"] = variables
        if "TracingConfig" in body:
            mode = body["TracingConfig"].get("Mode", "PassThrough")
            v.validate_tracing_mode(mode, violations=found)
            ch["tracing_mode"] = mode
        if "Layers" in body:
            v.validate_layers(body["Layers"], region=ctx.region, violations=found)
            ch["layers"] = tuple(body["Layers"])
        if "EphemeralStorage" in body:
            size = body["EphemeralStorage"].get("Size")
            v.validate_ephemeral_storage(size, violations=found)
            ch["ephemeral_storage"] = size
        if "Architectures" in body:
            v.validate_architectures(body["Architectures"], violations=found)
            ch["architectures"] = tuple(body["Architectures"])
        if "ImageConfig" in body:
            v.validate_image_config(body["ImageConfig"], violations=found)
            ch["image_config"] = body["ImageConfig"]
        found.raise_if_any()
        if "LoggingConfig" in body:
            ch["logging_config"] = body["LoggingConfig"]
        if "DeadLetterConfig" in body:
            ch["dead_letter_target"] = body["DeadLetterConfig"].get("TargetArn") or None
        if "KMSKeyArn" in body:
            ch["kms_key_arn"] = body["KMSKeyArn"] or None
        if "VpcConfig" in body:
            vpc = body["VpcConfig"]
            ch["vpc_config"] = (
                {"SubnetIds": vpc.get("SubnetIds", []), "SecurityGroupIds": vpc.get("SecurityGroupIds", []),
                 "VpcId": ""}
                if vpc.get("SubnetIds") or vpc.get("SecurityGroupIds") else {}
            )
        if "FileSystemConfigs" in body:
            ch["file_system_configs"] = tuple(body["FileSystemConfigs"])
        if "SnapStart" in body:
            apply_on = body["SnapStart"].get("ApplyOn", "None")
            if apply_on not in ("PublishedVersions", "None"):
                raise ValidationError(
                    f"1 validation error detected: Value '{apply_on}' at 'snapStart.applyOn' failed to "
                    "satisfy constraint: Member must satisfy enum value set: [PublishedVersions, None]"
                )
            ch["snap_start"] = {"ApplyOn": apply_on}
        runtime = ch.get("runtime", base.runtime if base else None)
        handler = ch.get("handler", base.handler if base else None)
        if package_type == "Zip" and creating:
            if runtime is None:
                raise InvalidParameterValue("Runtime and Handler are mandatory parameters for functions created with deployment packages.")
            if handler is None:
                raise InvalidParameterValue("Runtime and Handler are mandatory parameters for functions created with deployment packages.")
        if package_type == "Image" and ("Runtime" in body or "Handler" in body or "Layers" in body):
            bad = "Runtime" if "Runtime" in body else "Handler" if "Handler" in body else "Layers"
            raise InvalidParameterValue(
                f"Please don't provide {bad} when the intended function PackageType is Image."
            )
        return ch

    async def _store_zip(self, zip_b64: str) -> StoredCode:
        try:
            data = base64.b64decode(zip_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequestContent(
                "Could not parse request body into json: Cannot deserialize value of type `java.nio.ByteBuffer` "
                "from String: Failed to decode VALUE_STRING as base64"
            ) from exc
        return await trio.to_thread.run_sync(self.code.put_zip, data)

    async def _code_from(self, code: Body, package_type: str) -> dict[str, Any]:
        """Turn a Code / UpdateFunctionCode body into config changes (storing the zip)."""
        if package_type == "Image":
            uri = code.get("ImageUri")
            if not uri:
                raise InvalidParameterValue("ImageUri is required for Image package type.")
            return {"image_uri": uri, "code_sha256": _image_sha(uri), "code_size": 0, "code_id": None}
        if code.get("ImageUri"):
            raise InvalidParameterValue("Please provide ImageUri when the intended function PackageType is Image.")
        if code.get("ZipFile"):
            stored = await self._store_zip(code["ZipFile"])
            return {"code_id": stored.code_id, "code_sha256": stored.sha256_b64,
                    "code_size": stored.size, "s3_origin": {}, "hot_reload_path": None}
        if code.get("S3Bucket") == HOT_RELOAD_BUCKET and self.settings.hot_reload_enabled:
            path = await trio.to_thread.run_sync(self._hot_reload_path, code.get("S3Key") or "")
            return {"code_id": None, "code_sha256": HOT_RELOAD_SHA, "code_size": 0, "s3_origin": {},
                    "hot_reload_path": path}
        if code.get("S3Bucket") or code.get("S3Key"):
            bucket, key = code.get("S3Bucket") or "", code.get("S3Key") or ""
            version = code.get("S3ObjectVersion")
            stored = await self._store_s3(bucket, key, version)
            return {"code_id": stored.code_id, "code_sha256": stored.sha256_b64, "code_size": stored.size,
                    "s3_origin": {"bucket": bucket, "key": key, "version": version}, "hot_reload_path": None}
        raise InvalidParameterValue("Please provide a source for function code.")

    async def _store_s3(self, bucket: str, key: str, version: str | None) -> StoredCode:
        """Fetch a zip from the embedded S3 and store it (AWS's GetObject error text on failure)."""
        if self.s3 is None:
            raise InvalidParameterValue(
                "Error occurred while GetObject. S3 Error Code: NoSuchBucket. "
                "S3 Error Message: The specified bucket does not exist"
            )
        try:
            data = await self.s3.get_s3_object(bucket, key, version)
        except Exception as exc:
            code, message = getattr(exc, "code", None), getattr(exc, "message", None)
            if code is None:
                raise
            raise InvalidParameterValue(
                f"Error occurred while GetObject. S3 Error Code: {code}. S3 Error Message: {message}"
            ) from exc
        return await trio.to_thread.run_sync(self.code.put_zip, data)

    # ---- reactive S3 sync --------------------------------------------------------------------

    def s3_object_changed(self, bucket: str, key: str, version: str | None) -> None:
        """Called (synchronously, before the S3 client gets its answer) when an object changes:
        functions created from it are marked as syncing at once, so an invoke that follows the
        upload waits for the new code instead of racing it."""
        hit = False
        for k, st in self.functions.items():
            o = st.latest.s3_origin
            if o and o.get("bucket") == bucket and o.get("key") == key and not st.latest.hot_reload_path:
                self._syncing.setdefault(k, trio.Event())
                hit = True
        if hit:
            try:
                self._sync_send.send_nowait((bucket, key, version))
            except trio.WouldBlock:
                log.warning("too many S3 code changes queued; dropping the one for s3://%s/%s", bucket, key)
                self._release_syncing(bucket, key)

    async def wait_synced(self, region: str, account: str, name: str) -> None:
        """Return once no S3 sync of this function's code is pending."""
        event = self._syncing.get((region, account, name))
        if event is not None:
            await event.wait()

    def _release_syncing(self, bucket: str, key: str) -> None:
        for k, event in list(self._syncing.items()):
            o = self.functions[k].latest.s3_origin if k in self.functions else {}
            if not o or (o.get("bucket") == bucket and o.get("key") == key):
                del self._syncing[k]
                event.set()

    async def serve_s3_sync(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Re-read the code of functions whose S3 object changed (Floci's reactive sync): new
        CodeSha256 and RevisionId, warm $LATEST environments drained. No polling."""
        task_status.started()
        async for bucket, key, version in self._sync_receive:
            try:
                await self._sync_one(bucket, key, version)
            except Exception as exc:  # noqa: BLE001 - a bad upload keeps the old code, never kills the loop
                log.warning("could not reload code from s3://%s/%s: %s", bucket, key, exc)
            finally:
                self._release_syncing(bucket, key)

    async def _sync_one(self, bucket: str, key: str, version: str | None) -> None:
        stored = await self._store_s3(bucket, key, version)
        changed: list[FunctionConfig] = []
        async with self._lock:
            for st in self.functions.values():
                fn = st.latest
                o = fn.s3_origin
                if not o or o.get("bucket") != bucket or o.get("key") != key or fn.hot_reload_path:
                    continue
                if fn.code_id == stored.code_id:
                    continue
                new = attrs.evolve(
                    fn, code_id=stored.code_id, code_sha256=stored.sha256_b64, code_size=stored.size,
                    s3_origin={**o, "version": version}, revision_id=_new_revision(),
                    last_modified=aws_timestamp(),
                )
                await self._commit([Put("functions", _fn_key(new), new.to_json())])
                st.latest = new
                changed.append(new)
        for new in changed:
            log.info("function %s: code reloaded from s3://%s/%s", new.name, bucket, key)
            self._changed(new, LATEST)

    def _hot_reload_path(self, raw: str) -> str:
        """The directory a hot-reload function mounts, checked against the allow-list *after*
        resolving symlinks and ``..``, on path-component boundaries (``/tmp`` does not admit ``/tmpx``)."""
        if not raw.startswith("/"):
            raise InvalidParameterValue(f"Hot-reload path must be an absolute path on the host, got '{raw}'.")
        resolved = Path(os.path.realpath(raw))
        if not resolved.is_dir():
            raise InvalidParameterValue(f"Hot-reload path {raw} does not exist or is not a directory.")
        allowed = self.settings.hot_reload_allowed_paths
        if allowed and not any(resolved.is_relative_to(os.path.realpath(a)) for a in allowed):
            raise InvalidParameterValue(
                f"Hot-reload path {raw} (resolved to {resolved}) is not within the allowed paths "
                "(FLOCI_SERVICES_LAMBDA_HOT_RELOAD_ALLOWED_PATHS)."
            )
        if resolved == Path("/"):
            raise InvalidParameterValue("Hot-reload path / is not allowed: name the function's own directory.")
        return str(resolved)

    async def create_function(self, ctx: Ctx, body: Any) -> Body:
        body = check_fields(body, _CREATE_FIELDS)
        require(body, "FunctionName")
        require(body, "Role")
        require(body, "Code")
        ref = parse_function_name(
            body["FunctionName"], region=ctx.region, account=ctx.account, allow_qualifier=False,
            creating=True,
        )
        package_type = body.get("PackageType", "Zip")
        if package_type not in ("Zip", "Image"):
            raise ValidationError(
                f"1 validation error detected: Value '{package_type}' at 'packageType' failed to satisfy "
                "constraint: Member must satisfy enum value set: [Image, Zip]"
            )
        changes = self._config_from(ctx, body, None, creating=True)
        if "Tags" in body:
            v.validate_tags(body["Tags"])
        key = (ref.region, ref.account, ref.name)
        if key in self.functions:
            raise ResourceConflict(f"Function already exist: {ref.name}")
        changes |= await self._code_from(body["Code"], package_type)
        changes.setdefault("timeout", self.settings.default_timeout_seconds)
        changes.setdefault("memory_size", self.settings.default_memory_mb)
        state, reason, reason_code = "Active", None, None
        if package_type == "Image":
            state, reason, reason_code = await self._image_state(changes["image_uri"])
        fn = FunctionConfig(
            name=ref.name, region=ref.region, account=ref.account, version=LATEST,
            package_type=package_type, revision_id=_new_revision(), state=state,
            state_reason=reason, state_reason_code=reason_code, **changes,
        )
        async with self._lock:
            if key in self.functions:
                raise ResourceConflict(f"Function already exist: {ref.name}")
            st = FunctionState(latest=fn, tags=dict(body.get("Tags") or {}))
            ops: list[Op] = [
                Put("functions", _fn_key(fn), fn.to_json()),
            ]
            if st.tags:
                ops.append(Put("tags", key, st.tags))
            published = None
            if body.get("Publish"):
                published = self._publish_into(st, description=None)
                ops.append(Put("functions", _fn_key(published), published.to_json()))
            ops.append(Put("function_meta", key, st.meta()))
            await self._commit(ops)
            self.functions[key] = st
        if fn.state == "Pending" and fn.image_uri:
            self.settle_image(fn.region, fn.account, fn.name, fn.image_uri)
        out = self.render_config(published or fn)
        if published is not None:
            # AWS: Version "1" but the unqualified FunctionArn (peers.md 1.10 item 12).
            out["FunctionArn"] = fn.arn
        return out

    async def _image_state(self, image_uri: str) -> tuple[str, str | None, str | None]:
        """Active when the image is here (or no executor can tell); Pending while it is fetched."""
        source = self.image_source
        if source is None or self.background is None:
            return "Active", None, None
        try:
            if await source.has_image(image_uri):
                return "Active", None, None
        except Exception as exc:  # noqa: BLE001 - Docker down: the background attempt reports it
            log.debug("image check for %s failed: %s", image_uri, exc)
        return "Pending", "The function is being created.", "Creating"

    def settle_image(self, region: str, account: str, name: str, image_uri: str) -> None:
        """Fetch a Pending function's image in the background, then mark it Active or Failed."""
        if self.background is not None:
            self.background.start_soon(self._settle_image, region, account, name, image_uri)

    async def _settle_image(self, region: str, account: str, name: str, image_uri: str) -> None:
        assert self.image_source is not None
        try:
            await self.image_source.ensure_image(image_uri)
        except Exception as exc:  # noqa: BLE001 - any failure is the function's StateReason
            log.warning("image %s for function %s: %s", image_uri, name, exc)
            await self.set_function_state(region, account, name, "Failed", str(exc)[:1000], "ImageAccessDenied",
                                          only_image=image_uri)
        else:
            await self.set_function_state(region, account, name, "Active", only_image=image_uri)

    async def set_function_state(self, region: str, account: str, name: str, state: str,
                                 reason: str | None = None, reason_code: str | None = None,
                                 *, only_image: str | None = None) -> None:
        async with self._lock:
            st = self.functions.get((region, account, name))
            if st is None or (only_image is not None and st.latest.image_uri != only_image):
                return
            fn = attrs.evolve(st.latest, state=state, state_reason=reason, state_reason_code=reason_code)
            await self._commit([Put("functions", _fn_key(fn), fn.to_json())])
            st.latest = fn

    def get_function(self, ctx: Ctx, name: str, qualifier: str | None, base_url: str) -> Body:
        ref = self.ref(ctx, name, qualifier)
        st, fn, alias = self.resolve(ref)
        out: Body = {"Configuration": self.render_config(fn, arn=alias.arn if alias else None)}
        if fn.package_type == "Image":
            out["Code"] = {"RepositoryType": "ECR", "ImageUri": fn.image_uri,
                           "ResolvedImageUri": fn.image_uri}
        else:
            out["Code"] = {"RepositoryType": "S3",
                           "Location": f"{base_url}/_flocid/code/{fn.code_id}.zip"}
        if st.tags:
            out["Tags"] = dict(st.tags)
        if st.reserved is not None:
            out["Concurrency"] = {"ReservedConcurrentExecutions": st.reserved}
        return out

    def get_function_configuration(self, ctx: Ctx, name: str, qualifier: str | None) -> Body:
        ref = self.ref(ctx, name, qualifier)
        _st, fn, alias = self.resolve(ref)
        return self.render_config(fn, arn=alias.arn if alias else None)

    def list_functions(self, ctx: Ctx, *, marker: str | None, max_items: int | None,
                       function_version: str | None, master_region: str | None = None) -> Body:
        if function_version is not None and function_version != "ALL":
            raise ValidationError(
                f"1 validation error detected: Value '{function_version}' at 'functionVersion' failed to "
                "satisfy constraint: Member must satisfy enum value set: [ALL]"
            )
        items: list[FunctionConfig] = []
        for (region, account, _name), st in sorted(self.functions.items()):
            if region != ctx.region or account != ctx.account:
                continue
            items.append(st.latest)
            if function_version == "ALL":
                items.extend(st.versions[k] for k in sorted(st.versions, key=int))
        return _page(items, marker, max_items, "Functions", self.render_config,
                     key=lambda f: f"{f.name}:{f.version}")

    async def update_function_configuration(self, ctx: Ctx, name: str, body: Any) -> Body:
        body = check_fields(body, _UPDATE_CONFIG_FIELDS)
        ref = parse_function_name(name, region=ctx.region, account=ctx.account, allow_qualifier=False)
        async with self._lock:
            st = self.state(ref)
            fn = st.latest
            if "RevisionId" in body and body["RevisionId"] != fn.revision_id:
                raise PreconditionFailed(REVISION_MISMATCH)
            if fn.package_type == "Image" and "Runtime" in body:
                raise InvalidParameterValue("Please don't provide Runtime when the intended function PackageType is Image.")
            changes = self._config_from(ctx, body, fn, creating=False)
            new = attrs.evolve(fn, revision_id=_new_revision(), last_modified=aws_timestamp(), **changes)
            await self._commit([Put("functions", _fn_key(new), new.to_json())])
            st.latest = new
        self._changed(new, LATEST)
        return self.render_config(new)

    async def update_function_code(self, ctx: Ctx, name: str, body: Any) -> Body:
        body = check_fields(body, _UPDATE_CODE_FIELDS)
        ref = parse_function_name(name, region=ctx.region, account=ctx.account, allow_qualifier=False)
        st = self.state(ref)
        if "Architectures" in body:
            v.validate_architectures(body["Architectures"])
        changes = await self._code_from(body, st.latest.package_type)
        if "Architectures" in body:
            changes["architectures"] = tuple(body["Architectures"])
        if changes.get("image_uri"):
            state, reason, code = await self._image_state(changes["image_uri"])
            changes |= {"state": state, "state_reason": reason, "state_reason_code": code}
        async with self._lock:
            st = self.state(ref)
            fn = st.latest
            if "RevisionId" in body and body["RevisionId"] != fn.revision_id:
                raise PreconditionFailed(REVISION_MISMATCH)
            new = attrs.evolve(fn, revision_id=_new_revision(), last_modified=aws_timestamp(), **changes)
            if body.get("DryRun"):
                return self.render_config(new)
            ops: list[Op] = [Put("functions", _fn_key(new), new.to_json())]
            published = None
            tmp = attrs.evolve(st)
            tmp.latest = new
            if body.get("Publish"):
                published = self._publish_into(tmp, description=None)
                if published.version not in st.versions:
                    ops.append(Put("functions", _fn_key(published), published.to_json()))
                ops.append(Put("function_meta", st.key, tmp.meta()))
            await self._commit(ops)
            st.latest = new
            st.versions = tmp.versions
            st.next_version = tmp.next_version
        if new.state == "Pending" and new.image_uri:
            self.settle_image(new.region, new.account, new.name, new.image_uri)
        self._changed(new, LATEST)
        return self.render_config(published or new)

    async def delete_function(self, ctx: Ctx, name: str, qualifier: str | None) -> None:
        ref = self.ref(ctx, name, qualifier)
        async with self._lock:
            st = self.state(ref)
            q = ref.qualifier
            key = st.key
            if q is None:
                ops: list[Op] = [Delete(t, key) for t in
                                 ("functions", "function_meta", "aliases", "policies", "url_configs",
                                  "tags", "concurrency")]
                await self._commit(ops)
                del self.functions[key]
                self._changed(st.latest, None)
                return
            if q == LATEST:
                raise InvalidParameterValue("$LATEST version cannot be deleted without deleting the function.")
            if not q.isdigit():
                raise InvalidParameterValue(
                    "Deletion of aliases is not supported. Use the DeleteAlias API instead."
                )
            fn = st.versions.get(q)
            if fn is None:
                raise ResourceNotFound(f"Function not found: {function_arn(ref.region, ref.account, ref.name, q)}")
            users = sorted(a.name for a in st.aliases.values()
                           if a.function_version == q or q in a.routing)
            if users:
                raise ResourceConflict(
                    f"Unable to delete version because the following aliases reference it: [{', '.join(users)}]"
                )
            await self._commit([Delete("functions", _fn_key(fn)), Delete("policies", (*key, q))])
            del st.versions[q]
            st.policies.pop(q, None)
        self._changed(fn, q)

    # ---- versions ----------------------------------------------------------------------------

    @staticmethod
    def _fingerprint(fn: FunctionConfig) -> str:
        body = fn.to_json()
        for k in ("version", "revision_id", "last_modified", "description", "state", "state_reason",
                  "state_reason_code"):
            body.pop(k, None)
        return json.dumps(body, sort_keys=True)

    def _publish_into(self, st: FunctionState, *, description: str | None) -> FunctionConfig:
        """Freeze $LATEST as a new version in ``st`` (or return the last one if nothing changed)."""
        if st.versions:
            last = st.versions[max(st.versions, key=int)]
            if self._fingerprint(last) == self._fingerprint(st.latest):
                return last
        number = str(st.next_version)
        fn = attrs.evolve(
            st.latest, version=number, revision_id=_new_revision(), last_modified=aws_timestamp(),
            description=st.latest.description if description is None else description,
        )
        st.versions = {**st.versions, number: fn}
        st.next_version += 1
        return fn

    async def publish_version(self, ctx: Ctx, name: str, body: Any) -> tuple[int, Body]:
        body = check_fields(body, _PUBLISH_FIELDS)
        ref = parse_function_name(name, region=ctx.region, account=ctx.account, allow_qualifier=False)
        if "Description" in body:
            v.validate_description(body["Description"])
        async with self._lock:
            st = self.state(ref)
            fn = st.latest
            if "CodeSha256" in body and body["CodeSha256"] != fn.code_sha256:
                raise InvalidParameterValue(
                    f"CodeSHA256 ({body['CodeSha256']}) is different from current CodeSHA256 in $LATEST "
                    f"({fn.code_sha256}). Please try again with the CodeSHA256 in $LATEST."
                )
            if "RevisionId" in body and body["RevisionId"] != fn.revision_id:
                raise PreconditionFailed(REVISION_MISMATCH)
            tmp = attrs.evolve(st)
            published = self._publish_into(tmp, description=body.get("Description"))
            if published.version not in st.versions:
                await self._commit([
                    Put("functions", _fn_key(published), published.to_json()),
                    Put("function_meta", st.key, tmp.meta()),
                ])
                st.versions = tmp.versions
                st.next_version = tmp.next_version
        return 201, self.render_config(published)

    def list_versions(self, ctx: Ctx, name: str, marker: str | None, max_items: int | None) -> Body:
        ref = parse_function_name(name, region=ctx.region, account=ctx.account, allow_qualifier=False)
        st = self.state(ref)
        items = [st.latest, *(st.versions[k] for k in sorted(st.versions, key=int))]
        return _page(items, marker, max_items, "Versions", self.render_config, key=lambda f: f.version)

    # ---- aliases -----------------------------------------------------------------------------

    def _check_version(self, st: FunctionState, ref: FunctionRef, version: str) -> None:
        if version != LATEST and version not in st.versions:
            raise ResourceNotFound(
                f"Function not found: {function_arn(ref.region, ref.account, ref.name, version)}"
            )

    def _routing(self, st: FunctionState, ref: FunctionRef, primary: str, rc: Any) -> dict[str, float]:
        if rc is None:
            return {}
        if not isinstance(rc, dict):
            raise InvalidRequestContent("Could not parse request body into json: RoutingConfig")
        weights = rc.get("AdditionalVersionWeights") or {}
        v.validate_routing_config(weights, function_version=primary)
        for ver in weights:
            self._check_version(st, ref, ver)
            if ver == primary:
                raise InvalidParameterValue(
                    f"Invalid function version {ver}. Function version {ver} is already included in "
                    "routing configuration."
                )
        if weights and primary == LATEST:
            raise InvalidParameterValue("$LATEST is not supported for an alias pointing to more than 1 version")
        return {k: float(w) for k, w in weights.items()}

    def render_alias(self, a: Alias) -> Body:
        out: Body = {
            "AliasArn": a.arn, "Name": a.name, "FunctionVersion": a.function_version,
            "Description": a.description, "RevisionId": a.revision_id,
        }
        if a.routing:
            out["RoutingConfig"] = {"AdditionalVersionWeights": dict(a.routing)}
        return out

    async def create_alias(self, ctx: Ctx, name: str, body: Any) -> Body:
        body = check_fields(body, _ALIAS_FIELDS)
        ref = parse_function_name(name, region=ctx.region, account=ctx.account, allow_qualifier=False)
        require(body, "Name", "FunctionVersion")
        v.validate_alias_name(body["Name"])
        if "Description" in body:
            v.validate_description(body["Description"])
        async with self._lock:
            st = self.state(ref)
            self._check_version(st, ref, body["FunctionVersion"])
            routing = self._routing(st, ref, body["FunctionVersion"], body.get("RoutingConfig"))
            alias = Alias(
                name=body["Name"], function_name=ref.name, region=ref.region, account=ref.account,
                function_version=body["FunctionVersion"], description=body.get("Description", ""),
                routing=routing, revision_id=_new_revision(),
            )
            if alias.name in st.aliases:
                raise ResourceConflict(f"Alias already exists: {alias.arn}")
            await self._commit([Put("aliases", (*st.key, alias.name), alias.to_json())])
            st.aliases[alias.name] = alias
        return self.render_alias(alias)

    def get_alias(self, ctx: Ctx, name: str, alias_name: str) -> Body:
        ref = parse_function_name(name, region=ctx.region, account=ctx.account, allow_qualifier=False)
        st = self.state(ref)
        a = st.aliases.get(alias_name)
        if a is None:
            raise ResourceNotFound(
                f"Cannot find alias arn: {function_arn(ref.region, ref.account, ref.name, alias_name)}"
            )
        return self.render_alias(a)

    def list_aliases(self, ctx: Ctx, name: str, function_version: str | None, marker: str | None,
                     max_items: int | None) -> Body:
        ref = parse_function_name(name, region=ctx.region, account=ctx.account, allow_qualifier=False)
        st = self.state(ref)
        items = [a for _, a in sorted(st.aliases.items())
                 if function_version is None or a.function_version == function_version]
        return _page(items, marker, max_items, "Aliases", self.render_alias, key=lambda a: a.name)

    async def update_alias(self, ctx: Ctx, name: str, alias_name: str, body: Any) -> Body:
        body = check_fields(body, _ALIAS_FIELDS)
        ref = parse_function_name(name, region=ctx.region, account=ctx.account, allow_qualifier=False)
        async with self._lock:
            st = self.state(ref)
            a = st.aliases.get(alias_name)
            if a is None:
                raise ResourceNotFound(
                    f"Alias not found: {function_arn(ref.region, ref.account, ref.name, alias_name)}"
                )
            if "RevisionId" in body and body["RevisionId"] != a.revision_id:
                raise PreconditionFailed(REVISION_MISMATCH)
            version = body.get("FunctionVersion", a.function_version)
            self._check_version(st, ref, version)
            if "Description" in body:
                v.validate_description(body["Description"])
            routing = (self._routing(st, ref, version, body["RoutingConfig"])
                       if "RoutingConfig" in body else
                       self._routing(st, ref, version, {"AdditionalVersionWeights": a.routing}))
            new = attrs.evolve(a, function_version=version, routing=routing,
                               description=body.get("Description", a.description),
                               revision_id=_new_revision())
            await self._commit([Put("aliases", (*st.key, a.name), new.to_json())])
            st.aliases[a.name] = new
        return self.render_alias(new)

    async def delete_alias(self, ctx: Ctx, name: str, alias_name: str) -> None:
        ref = parse_function_name(name, region=ctx.region, account=ctx.account, allow_qualifier=False)
        async with self._lock:
            st = self.state(ref)
            if alias_name not in st.aliases:
                return  # AWS: deleting a missing alias is a no-op 204.
            await self._commit([
                Delete("aliases", (*st.key, alias_name)),
                Delete("policies", (*st.key, alias_name)),
                Delete("url_configs", (*st.key, alias_name)),
            ])
            del st.aliases[alias_name]
            st.policies.pop(alias_name, None)
            st.url_configs.pop(alias_name, None)

    # ---- resource policy ---------------------------------------------------------------------

    def _policy_target(self, ctx: Ctx, name: str, qualifier: str | None) -> tuple[FunctionState, FunctionRef, str]:
        ref = self.ref(ctx, name, qualifier)
        st = self.state(ref)
        q = ref.qualifier
        if q is not None and q != LATEST:
            if q.isdigit():
                if q not in st.versions:
                    raise ResourceNotFound(f"Function not found: {function_arn(ref.region, ref.account, ref.name, q)}")
            elif q not in st.aliases:
                raise ResourceNotFound(f"Cannot find alias arn: {function_arn(ref.region, ref.account, ref.name, q)}")
        return st, ref, q or ""

    async def add_permission(self, ctx: Ctx, name: str, qualifier: str | None, body: Any) -> Body:
        body = check_fields(body, _PERMISSION_FIELDS)
        require(body, "StatementId", "Action", "Principal")
        v.validate_statement_id(body["StatementId"])
        v.validate_action(body["Action"])
        v.validate_principal(body["Principal"])
        ref0 = self.ref(ctx, name, qualifier)
        if ref0.qualifier == LATEST:
            raise InvalidParameterValue("We currently do not support adding policies for $LATEST.")
        async with self._lock:
            st, ref, q = self._policy_target(ctx, name, qualifier)
            policy = st.policies.get(q) or {"revision": "", "statements": []}
            if "RevisionId" in body and policy["statements"] and body["RevisionId"] != policy["revision"]:
                raise PreconditionFailed(POLICY_REVISION_MISMATCH)
            sid = body["StatementId"]
            if any(s["Sid"] == sid for s in policy["statements"]):
                raise ResourceConflict(
                    f"The statement id ({sid}) provided already exists. Please provide a new statement id, "
                    "or remove the existing statement."
                )
            statement = _statement(body, function_arn(ref.region, ref.account, ref.name, q or None))
            new = {"revision": _new_revision(), "statements": [*policy["statements"], statement]}
            await self._commit([Put("policies", (*st.key, q), new)])
            st.policies[q] = new
        return {"Statement": json.dumps(statement, separators=(",", ":"))}

    def get_policy(self, ctx: Ctx, name: str, qualifier: str | None) -> Body:
        st, ref, q = self._policy_target(ctx, name, qualifier)
        policy = st.policies.get(q)
        if not policy or not policy["statements"]:
            raise ResourceNotFound("The resource you requested does not exist.")
        doc = {"Version": "2012-10-17", "Id": "default", "Statement": policy["statements"]}
        return {"Policy": json.dumps(doc, separators=(",", ":")), "RevisionId": policy["revision"]}

    async def remove_permission(self, ctx: Ctx, name: str, sid: str, qualifier: str | None,
                                revision_id: str | None) -> None:
        async with self._lock:
            st, ref, q = self._policy_target(ctx, name, qualifier)
            policy = st.policies.get(q)
            if not policy or not policy["statements"]:
                raise ResourceNotFound("No policy is associated with the given resource.")
            if revision_id is not None and revision_id != policy["revision"]:
                raise PreconditionFailed(POLICY_REVISION_MISMATCH)
            remaining = [s for s in policy["statements"] if s["Sid"] != sid]
            if len(remaining) == len(policy["statements"]):
                raise ResourceNotFound(f"Statement {sid} is not found in resource policy.")
            if remaining:
                new = {"revision": _new_revision(), "statements": remaining}
                await self._commit([Put("policies", (*st.key, q), new)])
                st.policies[q] = new
            else:
                await self._commit([Delete("policies", (*st.key, q))])
                st.policies.pop(q, None)

    # ---- tags --------------------------------------------------------------------------------

    def _tag_target(self, ctx: Ctx, arn: str) -> FunctionState:
        if not arn.startswith("arn:"):
            raise ValidationError(
                f"1 validation error detected: Value '{arn}' at 'resource' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: "
                "arn:(aws[a-zA-Z-]*):lambda:[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\\d{1}:\\d{12}:"
                "(function:[a-zA-Z0-9-_]+(:(\\$LATEST|[a-zA-Z0-9-_]+))?|layer:[a-zA-Z0-9-_]+|"
                "code-signing-config:csc-[a-z0-9]{17}|event-source-mapping:[0-9a-f]{8}-[0-9a-f]{4}-"
                "[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
            )
        ref = self.ref(ctx, arn)
        if ref.qualifier is not None:
            raise InvalidParameterValue(
                "Tags on function aliases and versions are not supported. Please specify a function ARN."
            )
        return self.state(ref)

    def list_tags(self, ctx: Ctx, arn: str) -> Body:
        return {"Tags": dict(self._tag_target(ctx, arn).tags)}

    async def tag_resource(self, ctx: Ctx, arn: str, body: Any) -> None:
        body = check_fields(body, _TAG_FIELDS)
        require(body, "Tags")
        async with self._lock:
            st = self._tag_target(ctx, arn)
            v.validate_tags(body["Tags"], existing=st.tags, tag_resource=True)
            merged = {**st.tags, **body["Tags"]}
            await self._commit([Put("tags", st.key, merged)])
            st.tags = merged

    async def untag_resource(self, ctx: Ctx, arn: str, keys: list[str] | None) -> None:
        if not keys:
            raise ValidationError(
                "1 validation error detected: Value null at 'tagKeys' failed to satisfy constraint: "
                "Member must not be null"
            )
        async with self._lock:
            st = self._tag_target(ctx, arn)
            remaining = {k: val for k, val in st.tags.items() if k not in keys}
            await self._commit([Put("tags", st.key, remaining) if remaining else Delete("tags", st.key)])
            st.tags = remaining

    # ---- reserved concurrency ----------------------------------------------------------------

    def reserved_total(self, region: str, account: str, *, excluding: str | None = None) -> int:
        return sum(
            st.reserved or 0 for (r, a, n), st in self.functions.items()
            if r == region and a == account and n != excluding
        )

    def reserved_for(self, region: str, account: str, name: str) -> int | None:
        st = self.functions.get((region, account, name))
        return st.reserved if st else None

    def _unqualified(self, ctx: Ctx, name: str) -> FunctionRef:
        ref = self.ref(ctx, name)
        if ref.qualifier is not None:
            raise InvalidParameterValue(
                "This operation is permitted on Lambda functions only. Aliases and versions do not support "
                "this operation. Please specify either a function name or an unqualified function ARN."
            )
        return ref

    async def put_function_concurrency(self, ctx: Ctx, name: str, body: Any) -> Body:
        body = check_fields(body, _CONCURRENCY_FIELDS)
        require(body, "ReservedConcurrentExecutions")
        n = body["ReservedConcurrentExecutions"]
        if n < 0:
            raise ValidationError(
                f"1 validation error detected: Value '{n}' at 'reservedConcurrentExecutions' failed to "
                "satisfy constraint: Member must have value greater than or equal to 0"
            )
        ref = self._unqualified(ctx, name)
        async with self._lock:
            st = self.functions.get((ref.region, ref.account, ref.name))
            if st is None:
                raise ResourceNotFound(
                    f"Function not found: {function_arn(ref.region, ref.account, ref.name, LATEST)}"
                )
            others = self.reserved_total(ref.region, ref.account, excluding=ref.name)
            limit = self.settings.region_concurrency_limit
            floor = self.settings.unreserved_concurrency_min
            if n > (st.reserved or 0) and limit - others - n < floor:
                raise InvalidParameterValue(
                    "Specified ReservedConcurrentExecutions for function decreases account's "
                    f"UnreservedConcurrentExecution below its minimum value of [{floor}]."
                )
            await self._commit([Put("concurrency", st.key, {"reserved": n})])
            st.reserved = n
        return {"ReservedConcurrentExecutions": n}

    def get_function_concurrency(self, ctx: Ctx, name: str) -> Body:
        ref = self._unqualified(ctx, name)
        st = self.functions.get((ref.region, ref.account, ref.name))
        if st is None:
            raise ResourceNotFound(
                f"Function not found: {function_arn(ref.region, ref.account, ref.name, LATEST)}"
            )
        return {} if st.reserved is None else {"ReservedConcurrentExecutions": st.reserved}

    async def delete_function_concurrency(self, ctx: Ctx, name: str) -> None:
        ref = self._unqualified(ctx, name)
        async with self._lock:
            st = self.functions.get((ref.region, ref.account, ref.name))
            if st is None:
                raise ResourceNotFound(
                    f"Function not found: {function_arn(ref.region, ref.account, ref.name, LATEST)}"
                )
            await self._commit([Delete("concurrency", st.key)])
            st.reserved = None

    # ---- function URL configs ----------------------------------------------------------------

    def _url_target(self, ctx: Ctx, name: str, qualifier: str | None, *, missing: str) -> tuple[FunctionState, FunctionRef, str]:
        ref = self.ref(ctx, name, qualifier)
        q = ref.qualifier
        if q is not None and (q == LATEST or q.isdigit()):
            raise ValidationError(
                f"1 validation error detected: Value '{q}' at 'qualifier' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: ((?!^\\d+$)^[0-9a-zA-Z-_]+$)"
            )
        st = self.functions.get((ref.region, ref.account, ref.name))
        if st is None or (q is not None and q not in st.aliases):
            raise ResourceNotFound(missing)
        return st, ref, q or ""

    def url_for(self, cfg: UrlConfig) -> str:
        port = self.settings.port
        host = self.settings.hostname or "localhost.floci.io"
        return f"http://{cfg.url_id}.lambda-url.{cfg.region}.{host}:{port}/"

    def render_url(self, cfg: UrlConfig, *, with_modified: bool = True, with_mode: bool = True) -> Body:
        out: Body = {
            "FunctionUrl": self.url_for(cfg),
            "FunctionArn": function_arn(cfg.region, cfg.account, cfg.function_name, cfg.qualifier),
            "AuthType": cfg.auth_type,
            "CreationTime": cfg.creation_time,
        }
        if cfg.cors:
            out["Cors"] = dict(cfg.cors)
        if with_modified:
            out["LastModifiedTime"] = cfg.last_modified_time
        if with_mode:
            out["InvokeMode"] = cfg.invoke_mode or "BUFFERED"
        return out

    def url_config_by_id(self, url_id: str) -> tuple[UrlConfig, FunctionState] | None:
        for st in self.functions.values():
            for cfg in st.url_configs.values():
                if cfg.url_id == url_id:
                    return cfg, st
        return None

    async def create_url_config(self, ctx: Ctx, name: str, qualifier: str | None, body: Any) -> Body:
        body = check_fields(body, _URL_FIELDS)
        require(body, "AuthType")
        v.validate_url_auth_type(body["AuthType"])
        if "InvokeMode" in body:
            v.validate_invoke_mode(body["InvokeMode"])
        if "Cors" in body:
            v.validate_cors(body["Cors"])
        async with self._lock:
            st, ref, q = self._url_target(ctx, name, qualifier, missing="Function does not exist")
            if q in st.url_configs:
                raise ResourceConflict(
                    "Failed to create function url config for [functionArn = "
                    f"{function_arn(ref.region, ref.account, ref.name, q or None)}]. Error message:  "
                    "FunctionUrlConfig exists for this Lambda function"
                )
            now = _iso_now()
            url_id = hashlib.md5(
                f"{ref.account}/{ref.region}/{ref.name}/{q}".encode(), usedforsecurity=False
            ).hexdigest()
            cfg = UrlConfig(
                function_name=ref.name, region=ref.region, account=ref.account, qualifier=q or None,
                url_id=url_id, auth_type=body["AuthType"], invoke_mode=body.get("InvokeMode"),
                cors=body.get("Cors") or {}, creation_time=now, last_modified_time=now,
            )
            await self._commit([Put("url_configs", (*st.key, q), cfg.to_json())])
            st.url_configs[q] = cfg
        out = self.render_url(cfg, with_modified=False, with_mode=cfg.invoke_mode is not None)
        return out

    def get_url_config(self, ctx: Ctx, name: str, qualifier: str | None) -> Body:
        missing = "The resource you requested does not exist."
        st, _ref, q = self._url_target(ctx, name, qualifier, missing=missing)
        cfg = st.url_configs.get(q)
        if cfg is None:
            raise ResourceNotFound(missing)
        return self.render_url(cfg)

    async def update_url_config(self, ctx: Ctx, name: str, qualifier: str | None, body: Any) -> Body:
        body = check_fields(body, _URL_FIELDS)
        if "AuthType" in body:
            v.validate_url_auth_type(body["AuthType"])
        if "InvokeMode" in body:
            v.validate_invoke_mode(body["InvokeMode"])
        if "Cors" in body:
            v.validate_cors(body["Cors"])
        async with self._lock:
            st, _ref, q = self._url_target(ctx, name, qualifier, missing="Function does not exist")
            cfg = st.url_configs.get(q)
            if cfg is None:
                raise ResourceNotFound("The resource you requested does not exist.")
            new = attrs.evolve(
                cfg, auth_type=body.get("AuthType", cfg.auth_type),
                invoke_mode=body.get("InvokeMode", cfg.invoke_mode),
                cors=body["Cors"] if "Cors" in body else cfg.cors, last_modified_time=_iso_now(),
            )
            await self._commit([Put("url_configs", (*st.key, q), new.to_json())])
            st.url_configs[q] = new
        return self.render_url(new)

    async def delete_url_config(self, ctx: Ctx, name: str, qualifier: str | None) -> None:
        missing = "The resource you requested does not exist."
        async with self._lock:
            st, _ref, q = self._url_target(ctx, name, qualifier, missing=missing)
            if q not in st.url_configs:
                raise ResourceNotFound(missing)
            await self._commit([Delete("url_configs", (*st.key, q))])
            del st.url_configs[q]

    def list_url_configs(self, ctx: Ctx, name: str, marker: str | None, max_items: int | None) -> Body:
        ref = parse_function_name(name, region=ctx.region, account=ctx.account, allow_qualifier=False)
        st = self.state(ref)
        items = [st.url_configs[k] for k in sorted(st.url_configs)]
        return _page(items, marker, max_items, "FunctionUrlConfigs", self.render_url,
                     key=lambda c: c.qualifier or "")

    # ---- code signing ------------------------------------------------------------------------

    def get_code_signing_config(self, ctx: Ctx, name: str) -> Body:
        ref = self._unqualified(ctx, name)
        self.state(ref)
        return {"CodeSigningConfigArn": "", "FunctionName": ref.name}


# ---------------------------------------------------------------------------------------------


def _image_sha(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()


def _iso_now() -> str:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}Z"


def _statement(body: Body, resource: str) -> Body:
    principal = body["Principal"]
    if principal == "*":
        princ: Any = "*"
    elif principal.isdigit() and len(principal) == 12:
        princ = {"AWS": f"arn:aws:iam::{principal}:root"}
    elif principal.startswith("arn:"):
        princ = {"AWS": principal}
    else:
        princ = {"Service": principal}
    st: Body = {
        "Sid": body["StatementId"], "Effect": "Allow", "Principal": princ,
        "Action": body["Action"], "Resource": resource,
    }
    cond: dict[str, dict[str, str]] = {}
    if "SourceAccount" in body:
        cond.setdefault("StringEquals", {})["AWS:SourceAccount"] = body["SourceAccount"]
    if "PrincipalOrgID" in body:
        cond.setdefault("StringEquals", {})["aws:PrincipalOrgID"] = body["PrincipalOrgID"]
    if "EventSourceToken" in body:
        cond.setdefault("StringEquals", {})["lambda:EventSourceToken"] = body["EventSourceToken"]
    if "FunctionUrlAuthType" in body:
        cond.setdefault("StringEquals", {})["lambda:FunctionUrlAuthType"] = body["FunctionUrlAuthType"]
    if "InvokedViaFunctionUrl" in body:
        cond.setdefault("Bool", {})["lambda:InvokedViaFunctionUrl"] = str(body["InvokedViaFunctionUrl"]).lower()
    if "SourceArn" in body:
        cond.setdefault("ArnLike", {})["AWS:SourceArn"] = body["SourceArn"]
    if cond:
        st["Condition"] = cond
    return st


def _page(items: Iterable[Any], marker: str | None, max_items: int | None, field: str,
          render: Callable[[Any], Body], *, key: Callable[[Any], str]) -> Body:
    """AWS-style paging: an opaque ``NextMarker`` naming the last item returned."""
    if max_items is not None and not 1 <= max_items <= 10000:
        raise ValidationError(
            f"1 validation error detected: Value '{max_items}' at 'maxItems' failed to satisfy constraint: "
            "Member must have value greater than or equal to 1"
        )
    seq = list(items)
    start = 0
    if marker:
        try:
            after = base64.urlsafe_b64decode(marker.encode()).decode()
        except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise InvalidParameterValue("Invalid marker") from exc
        keys = [key(x) for x in seq]
        start = next((i + 1 for i, k in enumerate(keys) if k == after), len(seq))
    limit = max_items or 50
    page = seq[start : start + limit]
    out: Body = {field: [render(x) for x in page]}
    if start + limit < len(seq) and page:
        out["NextMarker"] = base64.urlsafe_b64encode(key(page[-1]).encode()).decode()
    return out
