"""The HTTP/1.1 server of the API port: a lean keep-alive loop in front of the gateway.

Every connection starts here. Each request head is parsed by hand (``parse_request_head``) and
the gateway chooses the app (``Gateway.choose``):

    Invoke              answered in this loop: body read by Content-Length, ``InvokeApp.respond``,
                        the response written with one send. No ASGI messages, no task per request.
    any other request   the chosen ASGI app runs through a minimal ASGI adapter (``_Exchange``):
                        the body streams in by Content-Length (``Expect: 100-continue`` answered),
                        the response goes out with Content-Length, or chunked when streamed.
    anything else       (HTTP/1.0, a chunked request body, ``Upgrade``, absolute-form targets,
                        obs-fold, duplicate Content-Length): the connection is
                        handed to hypercorn's ``TCPServer`` with the bytes already read, and stays
                        there; hypercorn answers or rejects it properly.

Why: on a warm invoke, hypercorn (h11 events, ASGI messages, a task per request) cost more CPU than
the rest of flocid's Invoke path, and flocid's one event-loop thread is what bounds invokes/s on a
small machine (bench/README.md). Hypercorn still runs the lifespan and the odd connections.
A head over 64 KiB gets 431 and the connection closes (hypercorn's limit, kept).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from functools import partial
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote
from wsgiref.handlers import format_date_time

import attrs
import trio

from flocid.api.invoke import MAX_SYNC_REQUEST
from flocid.gateway import Gateway

log = logging.getLogger("flocid.front")

MAX_HEAD = 64 * 1024
KEEP_ALIVE_S = 75.0
_RECV = 64 * 1024
#: An unread request body up to this size is drained to keep the connection; a larger one closes it.
_DRAIN_MAX = 1024 * 1024
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})


@attrs.frozen
class RequestHead:
    method: str
    path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    content_length: int
    keep_alive: bool
    expect_continue: bool


def parse_request_head(head: bytes) -> RequestHead | None:
    """A request head (without its blank line) this loop serves, or None to hand the connection
    to hypercorn: only HTTP/1.1 origin-form requests with at most one plain Content-Length."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[0].isalpha() or not parts[1].startswith(b"/"):
        return None
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    keep_alive = True
    expect = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1] in b" \t" or name[0] in b" \t":
            return None
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name in (b"transfer-encoding", b"upgrade"):
            return None
        elif name == b"connection":
            tokens = {t.strip() for t in value.lower().split(b",")}
            if b"upgrade" in tokens:
                return None
            keep_alive = b"close" not in tokens
        elif name == b"expect":
            if value.lower() != b"100-continue":
                return None
            expect = True
        headers.append((name, value))
    path, _, query = parts[1].partition(b"?")
    try:
        path.decode("ascii")
    except UnicodeDecodeError:
        return None
    return RequestHead(method=parts[0].decode("ascii"), path=path, query=query, headers=headers,
                       content_length=length or 0, keep_alive=keep_alive, expect_continue=expect)


_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, format_date_time(now).encode())
    return _date_cache[1]


def render_head(status: int, headers: list[tuple[bytes, bytes]], *, close: bool) -> bytes:
    out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    for name, value in headers:
        out.append(b"%s: %s\r\n" % (name, value))
    out.append(b"date: %s\r\n" % _date())
    if close:
        out.append(b"connection: close\r\n")
    out.append(b"\r\n")
    return b"".join(out)


class _Replay(trio.abc.HalfCloseableStream):
    """A socket stream that first gives back the bytes this loop already read (for hypercorn)."""

    def __init__(self, stream: trio.SocketStream, pending: bytes) -> None:
        self._stream = stream
        self._pending = pending
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Closed(Exception):
    """The client went away mid-request."""


class Front:
    """Serves connections of the API port for ``gateway`` (see the module docstring)."""

    def __init__(self, gateway: Gateway, fallback: Callable[[trio.abc.HalfCloseableStream], Any],
                 state: MutableMapping[str, Any] | None = None) -> None:
        self.gateway = gateway
        self._fallback = fallback
        self._state = state if state is not None else {}
        invoke_app = gateway.invoke_app
        self._respond = getattr(invoke_app, "respond", None)

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, _Closed, OSError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _serve(self, stream: trio.SocketStream) -> None:
        sock = stream.socket
        try:
            client: tuple[str, int] | None = tuple(sock.getpeername()[:2])  # type: ignore[assignment]
            server: tuple[str, int] | None = tuple(sock.getsockname()[:2])  # type: ignore[assignment]
        except OSError:
            return
        buf = bytearray()
        gateway = self.gateway
        while True:
            # the head
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > MAX_HEAD:
                    await stream.send_all(render_head(431, [(b"content-length", b"0")], close=True))
                    return
                with trio.move_on_after(KEEP_ALIVE_S):
                    data = await stream.receive_some(_RECV)
                    if not data:
                        return
                    buf += data
                    end = buf.find(b"\r\n\r\n")
                    continue
                return  # idle (or a head never completed) for KEEP_ALIVE_S
            if end > MAX_HEAD:
                await stream.send_all(render_head(431, [(b"content-length", b"0")], close=True))
                return
            head = parse_request_head(bytes(buf[:end]))
            if head is None:
                await self._fallback(_Replay(stream, bytes(buf)))
                return
            del buf[: end + 4]
            scope: dict[str, Any] = {
                "type": "http", "http_version": "1.1", "asgi": {"spec_version": "2.1", "version": "3.0"},
                "method": head.method, "scheme": "http", "path": unquote(head.path.decode("ascii")),
                "raw_path": head.path, "query_string": head.query, "root_path": "", "headers": head.headers,
                "client": client, "server": server, "state": dict(self._state), "extensions": {},
            }
            app = gateway.choose(scope)
            if (app is gateway.invoke_app and self._respond is not None and not head.expect_continue
                    and head.content_length <= MAX_SYNC_REQUEST):
                await self._invoke(stream, buf, head, scope)
            elif not await self._asgi(stream, buf, head, scope):
                return
            if not head.keep_alive:
                return

    async def _invoke(self, stream: trio.SocketStream, buf: bytearray, head: RequestHead,
                      scope: dict[str, Any]) -> None:
        """The hot path: Invoke without ASGI."""
        length = head.content_length
        while len(buf) < length:
            data = await stream.receive_some(_RECV)
            if not data:
                raise _Closed
            buf += data
        body = bytes(buf[:length])
        del buf[:length]
        gateway = self.gateway
        assert self._respond is not None
        gateway.in_flight += 1
        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}
            status, out, payload = await self._respond(scope["path"], head.query, headers, body, True)
            out.append((b"content-length", b"%d" % len(payload)))
            # Still in flight until written: a graceful stop waits for the response, not just its result.
            await stream.send_all(render_head(status, out, close=not head.keep_alive) + payload)
        finally:
            gateway.request_done()

    async def _asgi(self, stream: trio.SocketStream, buf: bytearray, head: RequestHead,
                    scope: dict[str, Any]) -> bool:
        """One request through the gateway's ASGI apps; False when the connection must close."""
        ex = _Exchange(stream, buf, head)
        try:
            await self.gateway(scope, ex.receive, ex.send)
        except trio.Cancelled:
            raise
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        except Exception:
            log.exception("unexpected error answering %s %s", head.method, scope["path"])
            if ex.started:
                return False
        finally:
            ex.finished.set()
        if not ex.started:  # the app failed, or ended without answering: as hypercorn, a 500
            await ex.send({"type": "http.response.start", "status": 500,
                           "headers": [(b"content-type", b"text/plain")]})
            await ex.send({"type": "http.response.body", "body": b"Internal Server Error"})
        if not ex.done:
            return False  # the app ended a streamed response early: the client sees it cut
        return await ex.drain()


class _Exchange:
    """One request and its response, as an ASGI ``receive``/``send`` pair."""

    def __init__(self, stream: trio.SocketStream, buf: bytearray, head: RequestHead) -> None:
        self._stream = stream
        self._buf = buf
        self._head = head
        self._left = head.content_length
        self._body_given = False
        self._continue_sent = not head.expect_continue
        self._chunked = False
        self._status = 200
        self._headers: list[tuple[bytes, bytes]] = []
        self.started = False
        self.done = False
        self.finished = trio.Event()

    async def receive(self) -> dict[str, Any]:
        if self._left > 0 or not self._body_given:
            self._body_given = True
            if self._left == 0:
                return {"type": "http.request", "body": b"", "more_body": False}
            if not self._buf:
                if not self._continue_sent:
                    self._continue_sent = True
                    await self._stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                data = await self._stream.receive_some(min(_RECV, self._left))
                if not data:
                    self.finished.set()
                    return {"type": "http.disconnect"}
                self._buf += data
            n = min(len(self._buf), self._left)
            chunk = bytes(self._buf[:n])
            del self._buf[:n]
            self._left -= n
            return {"type": "http.request", "body": chunk, "more_body": self._left > 0}
        await self.finished.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self._status = int(message["status"])
            self._headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", ())]
            return
        if kind != "http.response.body":
            return  # trailers, early hints...: not offered in the scope's extensions
        if self.done:
            return
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        no_body = self._head.method == "HEAD" or self._status in _NO_BODY_STATUS or self._status < 200
        out = b""
        if not self.started:
            self.started = True
            headers = self._headers
            if not any(k == b"content-length" for k, _v in headers) and not no_body:
                if more:
                    self._chunked = True
                    headers.append((b"transfer-encoding", b"chunked"))
                else:
                    headers.append((b"content-length", b"%d" % len(body)))
            out = render_head(self._status, headers, close=not self._head.keep_alive)
        if not no_body and body:
            out += b"%x\r\n%s\r\n" % (len(body), body) if self._chunked else body
        if not more:
            self.done = True
            if self._chunked and not no_body:
                out += b"0\r\n\r\n"
        if out:
            await self._stream.send_all(out)

    async def drain(self) -> bool:
        """Read and drop what the app left of the request body; False when it is too much to keep
        the connection for (the connection closes instead)."""
        if self._left > _DRAIN_MAX:
            return False
        while self._left > 0:
            if not self._buf:
                data = await self._stream.receive_some(min(_RECV, self._left))
                if not data:
                    return False
                self._buf += data
            n = min(len(self._buf), self._left)
            del self._buf[:n]
            self._left -= n
        return True


async def serve_front(gateway: Gateway, config: Any, sockets: Any, *,
                      task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``gateway`` on already-bound (listening) sockets until cancelled: hypercorn's lifespan
    and worker context, this module's loop for the connections (hypercorn's ``TCPServer`` for the
    ones it hands over)."""
    from hypercorn.statsd import StatsdLogger
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.utils import repr_socket_addr, wrap_app

    config.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(cast(Any, gateway), config.wsgi_max_body_size, None)
    state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets.insecure_sockets]
            binds = [f"http://{repr_socket_addr(s.family, s.getsockname())}" for s in sockets.insecure_sockets]
            front = Front(gateway, partial(TCPServer, wrapped, config, context, dict(state)), state)
            task_status.started(binds)
            await trio.serve_listeners(front.handle, listeners, handler_nursery=server_nursery)
