"""The per-environment Runtime API server: trio streams + h11 around ``RuntimeProtocol``.

Hot path. One listener per environment; keep-alive connections; every response is written in one
``send_all`` (headers and body together) on a TCP_NODELAY socket, so loopback never waits on
Nagle / delayed ACK. Requests are parsed by a small hand parser when they are the plain
``Content-Length`` requests runtime clients send (h11 costs ~90 us per invoke, a third of the
server's overhead); anything else (chunked bodies, HTTP/1.0, malformed heads) switches that
connection to h11, which handles or rejects it properly.

Also the port allocator for the ``runtime_api_base_port..max_port`` range.
"""

from __future__ import annotations

import errno
import logging
import select
import time

import h11
import trio

from flocid.runtime_api.protocol import (
    MAX_RESPONSE_BYTES,
    Invocation,
    Reply,
    RouteKind,
    RuntimeProtocol,
    _error_reply,
    parse_head,
    render_response,
    route,
)

log = logging.getLogger(__name__)

_MAX_BODY = MAX_RESPONSE_BYTES + 1
_MAX_HEAD = 64 * 1024
_RECV = 256 * 1024
_JSON_S = ("Content-Type", "application/json")


class PortAllocator:
    """Hands out ports from ``[base, top]``; never one already handed out or bound by someone else.

    When the range is exhausted it falls back to an ephemeral port (port 0), so hundreds of warm
    environments work with the default 100-port range.
    """

    def __init__(self, base: int, top: int) -> None:
        self.base = base
        self.top = max(base, top)
        self._in_use: set[int] = set()
        self._cursor = base

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    async def open_listener(self, host: str) -> tuple[trio.SocketListener, int]:
        """Bind and listen on a free port; return the listener and its port."""
        size = self.top - self.base + 1
        for _ in range(size if self.base > 0 else 0):
            port = self._cursor
            self._cursor = self.base if port >= self.top else port + 1
            if port in self._in_use:
                continue
            try:
                listener = await _listen(host, port)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise
            self._in_use.add(port)
            return listener, port
        listener = await _listen(host, 0)
        port = listener.socket.getsockname()[1]
        self._in_use.add(port)
        return listener, port

    def release(self, port: int) -> None:
        self._in_use.discard(port)


async def _listen(host: str, port: int) -> trio.SocketListener:
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        await sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RuntimeApiServer:
    """Serves one environment's Runtime API and hands invocations to its runtime."""

    def __init__(self, protocol: RuntimeProtocol | None = None) -> None:
        self.protocol = protocol if protocol is not None else RuntimeProtocol()
        self._wakeup = trio.Event()
        #: Set when the runtime first asks ``/next`` (init done) or fails init.
        self.init_done = trio.Event()
        #: Connections accepted and ``/next`` requests seen (diagnostics: a runtime that never
        #: reached its Runtime API shows 0 connections).
        self.connections = 0
        self.next_requests = 0

    # -- the invoke side -------------------------------------------------------------------------

    def submit(self, inv: Invocation) -> None:
        """Queue ``inv``; a parked ``/next`` picks it up at once. Completion: ``inv.on_complete``."""
        if not self.protocol.submit(inv):
            self._wakeup.set()

    def abandon(self, inv: Invocation) -> None:
        self.protocol.abandon(inv)

    def exited(self, status: int) -> None:
        self.protocol.exited(status)
        self.init_done.set()
        self._wakeup.set()

    def stopped(self) -> None:
        self.protocol.stopped()
        self.init_done.set()
        self._wakeup.set()

    # -- the server ------------------------------------------------------------------------------

    async def serve(
        self, listener: trio.SocketListener, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept runtime connections until cancelled. Closes the listener on exit."""
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                self.connections += 1
                nursery.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        setsockopt = getattr(stream, "setsockopt", None)
        if setsockopt is not None:
            try:
                setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not a TCP socket
                pass
        async with stream:
            try:
                await self._fast_loop(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
                return

    async def _fast_loop(self, stream: trio.abc.Stream) -> None:
        """Plain ``Content-Length`` requests, parsed by hand; anything else goes to h11."""
        buf = bytearray()
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > _MAX_HEAD:
                    await stream.send_all(render_response(431, [_JSON_S], b"{}", close=True))
                    return
                data = await stream.receive_some(_RECV)
                if not data:
                    return
                buf += data
                end = buf.find(b"\r\n\r\n")
            head = parse_head(bytes(buf[:end]))
            if head is None:
                await self._h11_loop(stream, bytes(buf))
                return
            del buf[: end + 4]
            length = head.content_length
            if head.expect_continue and len(buf) < length:
                await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            if length <= _MAX_BODY:
                while len(buf) < length:
                    data = await stream.receive_some(_RECV)
                    if not data:
                        return
                    buf += data
                body = bytes(buf[:length])
                del buf[:length]
            else:
                # Too large to keep: read and drop it (the invocation gets ResponseSizeTooLarge).
                left = length - len(buf)
                buf.clear()
                while left > 0:
                    data = await stream.receive_some(_RECV)
                    if not data:
                        return
                    left -= len(data)
                if left < 0:
                    buf += data[left:]
                body = b""
            reply, headers = await self._dispatch(
                head.method, head.target, head.headers, body, length, stream
            )
            await stream.send_all(render_response(reply.status, headers, reply.body, close=not head.keep_alive))
            if not head.keep_alive:
                return

    async def _h11_loop(self, stream: trio.abc.Stream, pending: bytes) -> None:
        """The general HTTP/1.1 path (chunked bodies, HTTP/1.0, odd requests), for the rest of the connection."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        conn.receive_data(pending)
        while True:
            request: h11.Request | None = None
            chunks: list[bytes] = []
            size = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if conn.they_are_waiting_for_100_continue:
                        await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
                    conn.receive_data(bytes(await stream.receive_some(_RECV)))
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size <= _MAX_BODY:
                        chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
            assert request is not None
            body = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
            reply, out_headers = await self._dispatch(
                request.method.decode("ascii", "replace"), request.target.decode("ascii", "replace"),
                headers, body, size, stream,
            )
            raw_headers = [(k.encode(), v.encode()) for k, v in out_headers]
            raw_headers.append((b"Content-Length", str(len(reply.body)).encode()))
            out = conn.send(h11.Response(status_code=reply.status, headers=raw_headers)) or b""
            out += conn.send(h11.Data(data=reply.body)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
            await stream.send_all(out)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _dispatch(
        self, method: str, target: str, headers: dict[str, str], body: bytes, size: int, stream: trio.abc.Stream
    ) -> tuple[Reply, list[tuple[str, str]]]:
        r = route(method, target)
        kind = r.kind
        if kind is RouteKind.NEXT:
            return await self._next(stream)
        if kind is RouteKind.RESPONSE:
            assert r.request_id is not None
            reply = self.protocol.response(r.request_id, body, too_large=size > MAX_RESPONSE_BYTES)
        elif kind is RouteKind.ERROR:
            assert r.request_id is not None
            reply = self.protocol.error(r.request_id, body, headers.get("lambda-runtime-function-error-type"))
        elif kind is RouteKind.INIT_ERROR:
            reply = self.protocol.init_failed(body, headers.get("lambda-runtime-function-error-type"))
            self.init_done.set()
        elif kind is RouteKind.METHOD_NOT_ALLOWED:
            reply = _error_reply(405, "MethodNotAllowed", "Method not allowed")
        else:
            reply = _error_reply(404, "NotFound", "Not found")
        return reply, [_JSON_S]

    async def _next(self, stream: trio.abc.Stream) -> tuple[Reply, list[tuple[str, str]]]:
        self.next_requests += 1
        proto = self.protocol
        if proto.pending is not None and _peer_gone(stream):
            raise trio.BrokenResourceError("runtime went away")
        inv = proto.next_invocation(_now_ms())
        self.init_done.set()
        while inv is None:
            if self._wakeup.is_set():
                self._wakeup = trio.Event()
            await self._wakeup.wait()
            # A runtime that died while parked here cannot take the invocation; writing to its
            # closed socket would still "succeed". Leave the invocation pending instead: the
            # exit watcher fails it as never handed over, and the invoke retries elsewhere.
            if proto.pending is not None and _peer_gone(stream):
                raise trio.BrokenResourceError("runtime went away")
            inv = proto.next_invocation(_now_ms())
        headers = [
            _JSON_S,
            ("Lambda-Runtime-Aws-Request-Id", inv.request_id),
            ("Lambda-Runtime-Deadline-Ms", str(inv.deadline_ms)),
            ("Lambda-Runtime-Invoked-Function-Arn", inv.function_arn),
            # awslambdaric 4.x crashes when the trace header is missing: always send one.
            ("Lambda-Runtime-Trace-Id", inv.trace_id),
        ]
        if inv.client_context:
            headers.append(("Lambda-Runtime-Client-Context", inv.client_context))
        if inv.cognito_identity:
            headers.append(("Lambda-Runtime-Cognito-Identity", inv.cognito_identity))
        return Reply(200, inv.payload or b"{}"), headers


def _peer_gone(stream: trio.abc.Stream) -> bool:
    """True when a parked runtime's connection has something to read: EOF (it died) or data
    (a protocol violation). One zero-timeout ``poll``, ~2 us, for any descriptor number:
    ``select`` fails for descriptors over 1023, which a daemon with 200 warm containers has, and
    that failure read as "gone" closed live runtimes' first ``/next`` ("No Response from endpoint")."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # closed: fileno() is -1
        return True
