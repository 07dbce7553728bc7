"""The companion services at :4566 (S3, SQS, Kinesis, DynamoDB + Streams, CloudWatch Logs),
answered by moto's backends in-process.

The gateway hands this ASGI app every request that is not Lambda's. The request body is read
whole from ASGI ``receive``, then moto's own server app (the WSGI dispatcher ``moto server`` runs)
answers it in a worker thread. moto is synchronous and its backends are not thread-safe, so every
call into moto, requests and the Lambda-side helpers alike, goes through one ``CapacityLimiter(1)``:
a slow S3 upload occupies a worker thread, never the trio thread.

Account: ``settings.default_account`` for every request (moto's ``x-moto-account-id``); region:
the request's SigV4 scope. S3 virtual-hosted requests are turned path-style before moto sees
them. SQS queue URLs carry ``settings.hostname`` when set, else the request's Host.

Lifecycle: ``serve`` (start protocol) restores the snapshot from ``<data_dir>/services/`` and, on
cancellation, writes it back (shielded); see ``flocid.services.persist``. While running, a request
that may change a service (``dispatch.snapshot_part``) marks that service changed, and ``serve``
rewrites the changed services' files ``services_snapshot_interval_ms`` after the first change
(changes in between ride along), in the moto thread like any request: a ``kill -9`` loses about
one interval of changes. The mark is a set insert on the trio thread; the hot path does no I/O.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import trio

from flocid.config import Settings
from flocid.services import dispatch, persist
from flocid.services.dispatch import S3ObjectChanged

log = logging.getLogger("flocid.services")

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
S3Listener = Callable[[S3ObjectChanged], None]

#: Send responses in pieces this big, so a large GetObject does not become one huge ASGI message.
_CHUNK = 1 << 20
#: How long a stop may spend writing the snapshot.
SAVE_TIMEOUT_SECONDS = 60.0
#: The longest wait before trying a periodic snapshot again after it failed.
RETRY_MAX_SECONDS = 60.0
#: The most of the moto thread's time periodic snapshots may take: after one that took ``d``
#: seconds (10,000 S3 objects pickle in about 0.3 s), the next waits at least ``d / share``.
MAX_SNAPSHOT_SHARE = 0.2


def _describe(counts: dict[str, int]) -> str:
    return ("{buckets} bucket(s) with {objects} object(s), {queues} queue(s) with {messages} message(s), "
            "{streams} Kinesis stream(s) with {records} record(s), {tables} DynamoDB table(s) with {items} "
            "item(s) and {stream_records} stream record(s)").format(**counts)


class S3ObjectError(Exception):
    """GetObject failed; ``code`` is S3's error code (NoSuchBucket, NoSuchKey, NoSuchVersion...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Services:
    """The companion services: an ASGI app plus the small interface the Lambda side uses."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Called on the trio thread after PutObject / CopyObject / CompleteMultipartUpload
        #: succeeds. A listener must not block; hand the event to a channel if it needs to await.
        self.on_s3_object_changed: list[S3Listener] = []
        self._limiter = trio.CapacityLimiter(1)
        self._wsgi: Any = None
        #: Snapshot parts changed since the last snapshot began, and the event that says there are some.
        self._changed: set[str] = set()
        self._some_changed = trio.Event()
        #: Changes marked so far, and how many of them a finished periodic snapshot holds.
        self._marks = 0
        self._written = 0
        self._written_lot = trio.lowlevel.ParkingLot()
        #: Periodic snapshots written.
        self.snapshots = 0

    @property
    def snapshot_dir(self) -> Path:
        return self.settings.data_dir / "services"

    # ---- lifecycle -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load moto and the snapshot, report ready, and save the snapshot when cancelled."""
        counts = await self._run(self._load)
        if any(counts.values()):
            log.info("restored %s", _describe(counts))
        task_status.started()
        try:
            await self._serve_snapshots()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SAVE_TIMEOUT_SECONDS) as bound:
                try:
                    saved = await self.save()
                except persist.SnapshotIncomplete as exc:
                    saved = exc.counts  # the failed parts are logged already
                except OSError as exc:
                    log.error("cannot write the services snapshot to %s: %s", self.snapshot_dir, exc)
                    saved = {}
                if any(saved.values()):
                    log.info("saved %s to %s", _describe(saved), self.snapshot_dir)
            if bound.cancelled_caught:
                log.error("writing the services snapshot took over %.0f s; gave up", SAVE_TIMEOUT_SECONDS)

    async def save(self, parts: frozenset[str] | None = None) -> dict[str, int]:
        """Write the snapshot (S3, SQS, Kinesis, DynamoDB, or the ``parts`` named) now (``serve``
        does it on a clean stop, and for what changed while running)."""
        counts: dict[str, int] = await self._run(persist.save, self.snapshot_dir, parts)
        return counts

    def mark_changed(self, part: str) -> None:
        """Say that a snapshot part (``dispatch.SNAPSHOT_PARTS``) changed: the next periodic
        snapshot rewrites it. Call it on the trio thread, after the change."""
        self._changed.add(part)
        self._marks += 1
        self._some_changed.set()

    async def wait_snapshot_written(self) -> None:
        """Wait until every change marked so far is in a periodic snapshot on disk (never returns
        when the interval is 0 and something changed)."""
        target = self._marks
        while self._written < target:
            await self._written_lot.park()

    async def _serve_snapshots(self) -> None:
        """Write the changed parts ``services_snapshot_interval_ms`` after the first change, for ever.

        Waiting after the first change (not saving at once) coalesces a burst of writes into one
        snapshot and leaves the moto thread at least one interval between two snapshots, longer
        when snapshots are slow (``MAX_SNAPSHOT_SHARE``): a big state then loses more to a kill -9
        rather than stall requests most of the time. A change made while a snapshot is being
        written is marked after it and goes into the next one. A part that could not be written is
        tried again after twice the wait of the last try (up to a minute), so a full disk is not
        logged every second.
        """
        interval = self.settings.services_snapshot_interval_ms / 1000
        if interval <= 0:
            await trio.sleep_forever()
        wait = interval
        while True:
            await self._some_changed.wait()
            await trio.sleep(wait)
            parts = frozenset(self._changed)
            marks = self._marks
            self._changed.clear()
            self._some_changed = trio.Event()
            started = trio.current_time()
            try:
                await self.save(parts)
            except (persist.SnapshotIncomplete, OSError) as exc:
                if isinstance(exc, OSError):
                    log.error("cannot write the services snapshot to %s: %s", self.snapshot_dir, exc)
                self._changed |= exc.failed if isinstance(exc, persist.SnapshotIncomplete) else parts
                self._some_changed.set()
                wait = min(wait * 2, max(interval, RETRY_MAX_SECONDS))
                continue
            took = trio.current_time() - started
            # Every S3/SQS/... request waited for the moto thread this long, at most.
            log.debug("wrote the %s snapshot in %.1f ms", "+".join(sorted(parts)), took * 1000)
            wait = max(interval, took / MAX_SNAPSHOT_SHARE)
            self._written = marks
            self.snapshots += 1
            self._written_lot.unpark_all()

    def _load(self) -> dict[str, int]:
        self._ensure_moto()
        return persist.load(self.snapshot_dir)

    def _ensure_moto(self) -> Any:
        if self._wsgi is None:
            from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

            self._wsgi = DomainDispatcherApplication(create_backend_app)
        return self._wsgi

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a moto call in a worker thread, one at a time."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    # ---- the Lambda side ----------------------------------------------------------------------

    async def get_s3_object(self, bucket: str, key: str, version: str | None = None) -> bytes:
        """The bytes of an object in the default account, or ``S3ObjectError``."""
        return bytes(await self._run(self._get_object, bucket, key, version))

    def _get_object(self, bucket: str, key: str, version: str | None) -> bytes:
        self._ensure_moto()
        from moto.s3.exceptions import S3ClientError
        from moto.s3.models import s3_backends

        backend = s3_backends[self.settings.default_account]["aws"]
        try:
            found = backend.get_object(bucket, key, version_id=version)
        except S3ClientError as exc:
            raise S3ObjectError(str(getattr(exc, "code", "InternalError")), str(getattr(exc, "message", exc))) from exc
        if found is None:
            if version is not None:
                raise S3ObjectError("NoSuchVersion", "The specified version does not exist.")
            raise S3ObjectError("NoSuchKey", "The specified key does not exist.")
        if getattr(found, "is_delete_marker", False) or not hasattr(found, "value"):
            raise S3ObjectError("NoSuchKey", "The specified key does not exist.")
        return bytes(found.value)

    def _bucket_region(self, bucket: str) -> str:
        from moto.s3.models import s3_backends

        found = s3_backends[self.settings.default_account]["aws"].buckets.get(bucket)
        return str(found.region_name) if found is not None else self.settings.default_region

    # ---- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                break
        service = dispatch.service_name(scope, bytes(body))
        path: str = scope.get("path") or "/"
        raw_path: bytes = scope.get("raw_path") or path.encode()
        host = (dispatch.header(scope, b"host") or b"localhost").decode("latin-1")
        if service == "s3":
            bases = (self.settings.hostname,) if self.settings.hostname else ()
            path, raw_path, host = dispatch.path_style(scope, bases)
        elif service == "sqs" and self.settings.hostname:
            host = f"{self.settings.hostname}:{self.settings.port}"
        environ = dispatch.wsgi_environ(scope, bytes(body), path=path, raw_path=raw_path, host=host,
                                        account=self.settings.default_account)
        if service != "s3" and dispatch.signing_scope(scope) is None:
            environ["HTTP_AUTHORIZATION"] = dispatch.unsigned_authorization(
                service, self.settings.default_region)
        status, headers, payload, event = await self._run(self._call_moto, environ, service, path,
                                                          bytes(scope.get("query_string", b"")))
        action = dispatch.action_name(scope, bytes(body)) if service in dispatch.JSON_OR_QUERY_PARTS else None
        part = dispatch.snapshot_part(service, scope["method"], action)
        if part is not None:
            self.mark_changed(part)
        if event is not None:
            # Before the response: once the client sees 200, the listeners have the event.
            for listener in list(self.on_s3_object_changed):
                try:
                    listener(event)
                except Exception:
                    log.exception("S3 object-changed listener failed for %s", event)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for start in range(0, len(payload), _CHUNK):
            await send({"type": "http.response.body", "body": payload[start:start + _CHUNK],
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _call_moto(self, environ: dict[str, Any], service: str, path: str,
                   query: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes, S3ObjectChanged | None]:
        app = self._ensure_moto()
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return lambda data: chunks.append(data)

        chunks: list[bytes] = []
        try:
            result = app(environ, start_response)
            try:
                for chunk in result:
                    chunks.append(chunk)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception as exc:
            # A moto bug must not take the connection down: answer as AWS does for its own faults.
            log.exception("moto failed on %s %s", environ["REQUEST_METHOD"], path)
            body = json.dumps({"__type": "InternalFailure", "message": f"{type(exc).__name__}: {exc}"})
            return 500, [(b"content-type", b"application/x-amz-json-1.1"),
                         (b"content-length", str(len(body)).encode())], body.encode(), None
        status = int(str(started[0]).split(" ", 1)[0])
        payload = b"".join(chunks)
        headers: list[tuple[bytes, bytes]] = []
        version: str | None = None
        for name, value in started[1]:
            low = name.lower()
            if low in ("content-length", "transfer-encoding", "connection"):
                continue
            if low == "x-amz-version-id":
                version = value
            headers.append((low.encode("latin-1"), str(value).encode("latin-1")))
        if environ["REQUEST_METHOD"] == "HEAD":
            length = next((v for n, v in started[1] if n.lower() == "content-length"), None)
            headers.append((b"content-length", str(length if length is not None else 0).encode()))
            payload = b""
        else:
            headers.append((b"content-length", str(len(payload)).encode()))
        event = None
        if service == "s3":
            target = dispatch.changed_object(environ["REQUEST_METHOD"], path, query, status)
            if target is not None:
                bucket, key = target
                event = S3ObjectChanged(self._bucket_region(bucket), bucket, key,
                                        version if version and version != "null" else None)
        return status, headers, payload, event


def create_services_app(settings: Settings) -> Services:
    """The companion-services ASGI app; start ``services.serve`` in the root nursery too."""
    return Services(settings)
