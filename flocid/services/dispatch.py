"""Sans-IO pieces of the companion-services front: which service a request names, S3 addressing,
the WSGI environ moto's server app reads, which S3 writes change an object, and which requests
may change what the snapshot keeps.

Nothing here does I/O or imports moto; ``flocid.services.app`` is the trio shell around it.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import attrs

Scope = MutableMapping[str, Any]

_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/")
_QUERY_SCOPE = re.compile(r"X-Amz-Credential=[^&]*?(?:%2F|/)\d{8}(?:%2F|/)([a-z0-9-]+)(?:%2F|/)([a-z0-9-]+)(?:%2F|/)")
_AWS_S3_HOST = re.compile(r"^(?:(?P<bucket>.+)\.)?s3(?:[.-](?:dualstack\.)?[a-z0-9-]+)?\.amazonaws\.com$")
#: Hosts whose left-most labels name a bucket (``my-bucket.localhost``, ``my-bucket.localhost.floci.io``).
LOCAL_BASE_HOSTS = ("localhost.floci.io", "localhost")
#: Query keys that do not make a PUT/POST anything but an object write (boto3 adds ``x-id``).
_PLAIN_WRITE_KEYS = frozenset({"x-id"})
_ACTION = re.compile(rb"(?:^|&)Action=([A-Za-z0-9]+)")
#: The services whose state the snapshot keeps (``flocid.services.persist.PARTS``).
SNAPSHOT_PARTS = frozenset({"s3", "sqs", "kinesis", "dynamodb"})
#: Those whose requests name an action (S3's method says what a request does).
JSON_OR_QUERY_PARTS = SNAPSHOT_PARTS - {"s3"}
#: Action names of the JSON and query protocols that change nothing the snapshot keeps.
_READ_PREFIXES = ("Get", "List", "Describe", "BatchGet")
_READ_ACTIONS = frozenset({
    "Query", "Scan", "TransactGetItems",  # DynamoDB reads
    "SubscribeToShard",  # Kinesis enhanced fan-out: reads records
    # ReceiveMessage does change a queue: receive counts, visibility, a move to the dead-letter queue
    # past maxReceiveCount. A restart makes in-flight messages visible again anyway (``persist``), and
    # a snapshot per empty long poll would keep the moto thread busy for nothing; losing a receive
    # to kill -9 is a redelivery, which at-least-once SQS allows.
    "ReceiveMessage",
})
#: S3 methods that change nothing (REST: the method says it).
_S3_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@attrs.frozen
class S3ObjectChanged:
    """An S3 object got new content: PutObject, CopyObject or CompleteMultipartUpload."""

    region: str
    bucket: str
    key: str
    version: str | None


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if bytes(key).lower() == name:
            return bytes(value)
    return None


def signing_scope(scope: Scope) -> tuple[str, str] | None:
    """(region, service) from the SigV4 credential scope (header or presigned query), if signed."""
    auth = header(scope, b"authorization")
    if auth:
        m = _SCOPE.search(auth.decode("latin-1"))
        if m:
            return m.group(1), m.group(2)
    m = _QUERY_SCOPE.search(bytes(scope.get("query_string", b"")).decode("latin-1"))
    return (m.group(1), m.group(2)) if m else None


def service_name(scope: Scope, body: bytes = b"") -> str:
    """The service a request is for: the SigV4 scope service, else the ``X-Amz-Target`` prefix,
    else a query-protocol ``Action`` (SQS is the one such service here), else S3 (an unsigned or
    anonymous request: a SigV2 presigned URL, a browser, curl)."""
    signed = signing_scope(scope)
    if signed:
        return signed[1]
    if _has_action(scope, body):
        return "sqs"
    target = (header(scope, b"x-amz-target") or b"").decode("latin-1")
    if target.startswith("DynamoDBStreams"):
        return "dynamodb"
    if target.startswith("DynamoDB"):
        return "dynamodb"
    if target.startswith("Kinesis"):
        return "kinesis"
    if target.startswith("Logs"):
        return "logs"
    if target.startswith("AmazonSQS"):
        return "sqs"
    return "s3"


def _has_action(scope: Scope, body: bytes) -> bool:
    if re.search(rb"(?:^|&)Action=", bytes(scope.get("query_string", b""))):
        return True
    ctype = header(scope, b"content-type") or b""
    return ctype.startswith(b"application/x-www-form-urlencoded") and bool(
        re.search(rb"(?:^|&)Action=", body))


def action_name(scope: Scope, body: bytes = b"") -> str | None:
    """The operation of a JSON-protocol (``X-Amz-Target: Service_Version.Action``) or query-protocol
    (``Action=`` in the query string or a form body) request; None for REST (S3)."""
    target = header(scope, b"x-amz-target")
    if target:
        return target.decode("latin-1").rpartition(".")[2] or None
    m = _ACTION.search(bytes(scope.get("query_string", b"")))
    if m is None and (header(scope, b"content-type") or b"").startswith(b"application/x-www-form-urlencoded"):
        m = _ACTION.search(body)
    return m.group(1).decode("ascii") if m else None


def snapshot_part(service: str, method: str, action: str | None) -> str | None:
    """The snapshot part (a ``SNAPSHOT_PARTS`` name) a request to ``service`` may have changed, or
    None when it changed nothing the snapshot keeps: S3 GET/HEAD/OPTIONS, an action named like a
    read (Get*, List*, Describe*, BatchGet*, Query, Scan, TransactGetItems, SubscribeToShard) or
    ReceiveMessage, and every request to a service the snapshot does not keep (CloudWatch Logs).
    An action it cannot name counts as a write: a needless snapshot costs little, a missed one a
    change."""
    if service not in SNAPSHOT_PARTS:
        return None
    if service == "s3":
        return None if method.upper() in _S3_READ_METHODS else "s3"
    if action is not None and (action in _READ_ACTIONS or action.startswith(_READ_PREFIXES)):
        return None
    return service


def unsigned_authorization(service: str, region: str) -> str:
    """A SigV4-shaped Authorization naming ``service``, for an unsigned request whose service was
    found another way: moto's dispatcher reads the service from the credential scope only."""
    return (f"AWS4-HMAC-SHA256 Credential=anonymous/20000101/{region}/{service}/aws4_request, "
            "SignedHeaders=host, Signature=0")


def virtual_host_bucket(host: str, extra_bases: Iterable[str] = ()) -> tuple[str, str] | None:
    """(bucket, base host) when ``host`` (port allowed) addresses a bucket virtual-hosted style."""
    name, sep, port = host.rpartition(":")
    if not sep or not port.isdigit() or name.endswith("]"):
        name, port = host, ""
    name = name.lower()
    suffix = f":{port}" if port else ""
    m = _AWS_S3_HOST.match(name)
    if m:
        bucket = m.group("bucket")
        return (bucket, name[len(bucket) + 1:] + suffix) if bucket else None
    for base in (*extra_bases, *LOCAL_BASE_HOSTS):
        base = base.lower()
        if base and name.endswith("." + base):
            bucket = name[: -len(base) - 1]
            if bucket.endswith(".s3"):  # my-bucket.s3.localhost.floci.io
                bucket = bucket[:-3]
            if not bucket or bucket == "s3":
                return None
            # moto must see a host it takes for path style: any *.localhost.floci.io name would be
            # read as one more virtual host (bucket "s3"), plain localhost never is.
            return bucket, "localhost" + suffix
    return None


def path_style(scope: Scope, extra_bases: Iterable[str] = ()) -> tuple[str, bytes, str]:
    """(path, raw path, host) of an S3 request in path style: a virtual-hosted bucket moves from the
    Host header into the path, so moto sees one addressing form."""
    host = (header(scope, b"host") or b"").decode("latin-1")
    path: str = scope.get("path") or "/"
    raw: bytes = scope.get("raw_path") or path.encode()
    found = virtual_host_bucket(host, extra_bases)
    if found is None:
        return path, raw, host
    bucket, base = found
    return "/" + bucket + path, b"/" + bucket.encode() + raw, base


def object_of(path: str) -> tuple[str, str] | None:
    """(bucket, key) of a path-style object path, or None for a bucket or the service root."""
    bucket, sep, key = path.lstrip("/").partition("/")
    if not bucket or not sep or not key:
        return None
    return bucket, key


def changed_object(method: str, path: str, query: bytes, status: int) -> tuple[str, str] | None:
    """(bucket, key) when a successful request replaced an object's content.

    PutObject and CopyObject are a PUT on the object with no sub-resource (UploadPart carries
    ``partNumber``/``uploadId``; ``?tagging``, ``?acl``... change no content); CompleteMultipartUpload
    is a POST with ``uploadId`` alone.
    """
    if status != 200:
        return None
    target = object_of(path)
    if target is None:
        return None
    keys = {k for k, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)}
    if method == "PUT" and keys <= _PLAIN_WRITE_KEYS:
        return target
    if method == "POST" and "uploadId" in keys and keys <= _PLAIN_WRITE_KEYS | {"uploadId"}:
        return target
    return None


def wsgi_environ(scope: Scope, body: bytes, *, path: str, raw_path: bytes, host: str,
                 account: str) -> dict[str, Any]:
    """The WSGI environ for moto's server app. ``x-moto-account-id`` pins the account."""
    query = bytes(scope.get("query_string", b""))
    server = scope.get("server") or ("localhost", 80)
    server_name, _, server_port = host.partition(":")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "RAW_URI": raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else ""),
        "SERVER_NAME": server_name or str(server[0]),
        "SERVER_PORT": server_port or str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": (scope.get("client") or ("127.0.0.1", 0))[0],
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    environ["REQUEST_URI"] = environ["RAW_URI"]
    for raw_name, raw_value in scope.get("headers", ()):
        name = bytes(raw_name).decode("latin-1").lower()
        value = bytes(raw_value).decode("latin-1")
        if name in ("content-length", "transfer-encoding"):
            continue  # the body is whole by now: CONTENT_LENGTH says how long it is
        if name == "host":
            value = host
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = environ[key] + "," + value if key in environ else value
    environ["CONTENT_LENGTH"] = str(len(body))
    environ["HTTP_X_MOTO_ACCOUNT_ID"] = account
    return environ

