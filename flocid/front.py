"""The HTTP/1.1 server of the API port: a lean keep-alive loop in front of the gateway.

Every connection starts here. Each request head is parsed by hand (``parse_request_head``) and
the gateway chooses the app (``Gateway.choose``):

    Invoke              answered in this loop: body read by Content-Length, ``InvokeApp.respond``,
                        the response written with one send. No ASGI messages, no task per request.
    any other request   the chosen ASGI app runs through a minimal ASGI adapter (``_Exchange``):
                        the body streams in by Content-Length (``Expect: 100-continue`` answered),
                        the response goes out with Content-Length, or chunked when streamed.
    anything else       (HTTP/1.0, a chunked request body, ``Upgrade``, absolute-form targets,
                        obs-fold, duplicate or malformed Content-Length, control characters
                        other than CRLF in the head): the connection is handed to hypercorn's
                        ``TCPServer`` with the bytes already read, and stays there; hypercorn
                        answers or rejects it properly.

What it keeps from hypercorn/h11 (tests/unit/test_front.py): methods are upper-cased; a client
that goes away while an ASGI app works is an ``http.disconnect`` once the app asks for one (and an
``OSError`` from ``send``: ``ClientDisconnected``), while an Invoke runs to its end as InvokeApp did;
a response whose body does not match its own Content-Length, or that the app ends early, closes the
connection (too much in the first message: a 500); 204 has no Content-Length and 1xx/204/304 and
HEAD no body (HEAD gets the Content-Length a GET would); the app's ``connection: close`` closes it;
an answer given before a body announced with ``Expect: 100-continue`` (or one too big to drain)
says ``connection: close`` and closes. Keep-alive: 75 s to the end of the next request head,
however it trickles in. Idle connections are not in ``Gateway.in_flight``: a graceful stop never
waits for them.

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

import trio

from flocid.api.invoke import MAX_SYNC_REQUEST
from flocid.gateway import Gateway
from flocid.http11 import RequestHead, parse_request_head

log = logging.getLogger("flocid.front")

MAX_HEAD = 64 * 1024
KEEP_ALIVE_S = 75.0
_RECV = 64 * 1024
#: An unread request body up to this size is drained to keep the connection; a larger one closes it.
_DRAIN_MAX = 1024 * 1024
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_NO_BODY_STATUS = frozenset({204, 304})
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
        # hypercorn's send_eof (its connection close) runs outside its send lock and could meet
        # the app's last write (BusyResourceError, logged as an app error): one at a time here
        self._send_lock = trio.Lock()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        async with self._send_lock:
            await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        async with self._send_lock:
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Closed(Exception):
    """The client went away mid-request."""


class ClientDisconnected(OSError):
    """What an ASGI app's ``send`` raises once the client is gone (ASGI: a server-specific OSError)."""


_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _is_disconnect(exc: BaseException) -> bool:
    """A client-gone error, or a group of nothing else (an app's nursery wraps what send raised)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_disconnect(e) for e in exc.exceptions)
    return isinstance(exc, (ClientDisconnected, trio.BrokenResourceError, trio.ClosedResourceError, _Closed))


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
        except Exception:  # one connection's trouble must never end serve_listeners (and the daemon)
            log.exception("unexpected error on an API connection")
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
            # the head: KEEP_ALIVE_S from now to its end (a trickle of bytes does not extend it)
            deadline = trio.current_time() + KEEP_ALIVE_S
            while buf[:2] == b"\r\n":  # empty lines before a request line are ignored (RFC 9112 2.2)
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > MAX_HEAD:
                    await stream.send_all(render_head(431, [(b"content-length", b"0")], close=True))
                    return
                with trio.move_on_at(deadline):
                    data = await stream.receive_some(_RECV)
                    if not data:
                        return
                    searched = max(len(buf) - 3, 0)  # a head arriving byte by byte is not searched again
                    buf += data
                    while buf[:2] == b"\r\n":
                        del buf[:2]
                        searched = 0
                    end = buf.find(b"\r\n\r\n", searched)
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
            try:
                status, out, payload = await self._respond(scope["path"], head.query, headers, body, True)
            except Exception:  # InvokeApp.respond answers its own errors: this is a bug (hypercorn: a 500)
                log.exception("unexpected error answering %s %s", head.method, scope["path"])
                status, out, payload = 500, [(b"content-type", b"text/plain")], b"Internal Server Error"
            if status == 204:
                payload = b""  # no Content-Length on a 204 (RFC 9110 8.6)
            else:
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
        except Exception as exc:
            if ex.disconnected and _is_disconnect(exc):
                return False  # the client went away: the app saw it, nothing to report
            log.exception("unexpected error answering %s %s", head.method, scope["path"])
            if ex.started:
                return False
        finally:
            ex.finish()
        if ex.disconnected:
            return False
        if not ex.started:  # the app failed, or ended without answering: as hypercorn, a 500
            ex.reset()
            await ex.send({"type": "http.response.start", "status": 500,
                           "headers": [(b"content-type", b"text/plain")]})
            await ex.send({"type": "http.response.body", "body": b"Internal Server Error"})
        if not ex.done or ex.close:
            return False  # a response cut short or too long, or the connection was to close after it
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
        self._finished = trio.Event()
        self._watch: trio.CancelScope | None = None
        #: The client is gone (EOF or a failed write): the connection closes after the app.
        self.disconnected = False
        self.reset()

    def reset(self) -> None:
        """No response yet (again, for the 500 of an app that failed before writing one)."""
        self._chunked = False
        self._status = 200
        self._headers: list[tuple[bytes, bytes]] = []
        self._start_given = False
        self._declared: int | None = None  # the app's own Content-Length
        self._sent = 0
        self._no_body = False
        self.started = False  # the head is written
        self.done = False  # the response is complete
        #: The connection closes after this response (said in its head).
        self.close = not self._head.keep_alive

    def finish(self) -> None:
        """The app has returned: a ``receive`` still waiting for a disconnect stops reading."""
        self._finished.set()
        if self._watch is not None:
            self._watch.cancel()

    async def receive(self) -> dict[str, Any]:
        if self.disconnected:
            return {"type": "http.disconnect"}
        if self._left > 0 or not self._body_given:
            self._body_given = True
            if self._left == 0:
                return {"type": "http.request", "body": b"", "more_body": False}
            if not self._buf:
                try:
                    if not self._continue_sent:
                        self._continue_sent = True
                        await self._stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    data = await self._stream.receive_some(min(_RECV, self._left))
                except _GONE:
                    data = b""
                if not data:
                    self.disconnected = True
                    return {"type": "http.disconnect"}
                self._buf += data
            n = min(len(self._buf), self._left)
            chunk = bytes(self._buf[:n])
            del self._buf[:n]
            self._left -= n
            return {"type": "http.request", "body": chunk, "more_body": self._left > 0}
        return await self._wait_disconnect()

    async def _wait_disconnect(self) -> dict[str, Any]:
        """The body is read and the app waits for the client to go away (as Quart does, to cancel
        its handler): answer at EOF, as hypercorn did. Once the next request of a pipelining
        client is there (kept for later), stop reading, as hypercorn (h11 pauses): a client that
        pipelines and then half-closes still gets every answer. Stops when the app returns."""
        with trio.CancelScope() as watch:
            self._watch = watch
            if self._finished.is_set():
                watch.cancel()
            while not self._buf:
                try:
                    data = await self._stream.receive_some(_RECV)
                except _GONE:
                    data = b""
                if not data:
                    self.disconnected = True
                    break
                self._buf += data
            else:
                await self._finished.wait()
        self._watch = None
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self._start_given:
                raise RuntimeError("http.response.start sent twice")
            self._start(int(message["status"]), message.get("headers", ()))
            return
        if kind != "http.response.body":
            return  # trailers, early hints...: not offered in the scope's extensions
        if not self._start_given:
            raise RuntimeError("http.response.body before http.response.start")
        if self.done:
            return
        if self.disconnected:
            raise ClientDisconnected("the client has gone away")
        given = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        no_body = self._no_body
        body = b"" if no_body else given
        if self._declared is not None and not no_body:
            self._sent += len(body)
            if self._sent > self._declared:
                self.close = True  # as h11: refused, nothing of it written (before the head: a 500)
                raise RuntimeError(f"response body longer than its Content-Length ({self._declared})")
        out = b""
        if not self.started:
            self.started = True
            headers = self._headers
            if self._declared is None and not (no_body and self._head.method != "HEAD"):
                if more:
                    if not no_body:
                        self._chunked = True
                        headers.append((b"transfer-encoding", b"chunked"))
                elif given or not no_body:  # a HEAD answered with the body of a GET: its length
                    headers.append((b"content-length", b"%d" % len(given)))
            if self._head.expect_continue and not self._continue_sent and self._left:
                self.close = True  # the client may never send the body it announced (RFC 9110 10.1.1)
            elif self._left > _DRAIN_MAX:
                self.close = True  # too much left to read through for the next request
            self._continue_sent = True  # never a 100 after a final answer
            out = render_head(self._status, headers, close=self.close)
            lines = len(headers) + 3 + self.close
            if out.count(b"\n") != lines or out.count(b"\r") != lines:  # a CR or LF inside a name or value
                self.started = False
                raise ValueError("invalid response header (CR or LF in a name or value)")
        if body:
            out += b"%x\r\n%s\r\n" % (len(body), body) if self._chunked else body
        short = False
        if not more:
            self.done = True
            if self._chunked:
                out += b"0\r\n\r\n"
            elif self._declared is not None and not no_body and self._sent < self._declared:
                self.close = short = True
        if out:
            try:
                await self._stream.send_all(out)
            except _GONE as exc:
                self.disconnected = True
                raise ClientDisconnected("the client has gone away") from exc
        if short:  # as h11: the message cannot end here; the client sees EOF
            raise RuntimeError(f"response body shorter than its Content-Length ({self._declared})")

    def _start(self, status: int, raw_headers: Any) -> None:
        if not 200 <= status <= 999:
            raise ValueError(f"response status {status}: ASGI answers are final (200-999)")
        headers: list[tuple[bytes, bytes]] = []
        declared: int | None = None
        for k, v in raw_headers:
            name, value = bytes(k).lower(), bytes(v)
            if name == b"content-length":
                value = value.strip()
                if not value.isdigit() or len(value) > 18 or declared not in (None, int(value)):
                    raise ValueError(f"invalid response Content-Length {value!r}")
                if declared is None:
                    declared = int(value)
                    if status != 204:  # RFC 9110 8.6: never on a 204
                        headers.append((name, value))
                continue
            if name == b"transfer-encoding":
                continue  # the framing is the server's
            if name == b"connection":
                if b"close" in (t.strip() for t in value.lower().split(b",")):
                    self.close = True
                continue
            headers.append((name, value))
        self._status = status
        self._headers = headers
        self._start_given = True
        self._no_body = self._head.method == "HEAD" or status in _NO_BODY_STATUS
        self._declared = None if status == 204 else declared

    async def drain(self) -> bool:
        """Read and drop what the app left of the request body; False when it is too much to keep
        the connection for, or does not come in KEEP_ALIVE_S (the connection closes instead)."""
        if self._left > _DRAIN_MAX:
            return False
        with trio.move_on_after(KEEP_ALIVE_S):
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
        return False


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
