"""The Runtime API: routing and the invocation state machine (sans-IO), then the h11 server on a socket."""

from __future__ import annotations

import json
import os

import pytest
import trio
import trio.testing

from flocid.runtime_api.protocol import (
    MAX_RESPONSE_BYTES,
    Invocation,
    OutcomeKind,
    Phase,
    ProtocolBusy,
    RouteKind,
    RuntimeProtocol,
    parse_head,
    render_response,
    route,
)
from flocid.runtime_api.server import PortAllocator, RuntimeApiServer


def make_inv(request_id: str = "req-1", payload: bytes = b'{"a":1}') -> Invocation:
    return Invocation(
        request_id=request_id, payload=payload, function_arn="arn:aws:lambda:us-east-1:000000000000:function:f",
        timeout_ms=3000, trace_id="Root=1-00000000-000000000000000000000000;Sampled=0",
    )


# -- routing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "kind", "rid"),
    [
        ("GET", "/2018-06-01/runtime/invocation/next", RouteKind.NEXT, None),
        ("POST", "/2018-06-01/runtime/invocation/abc-1/response", RouteKind.RESPONSE, "abc-1"),
        ("POST", "/2018-06-01/runtime/invocation/abc-1/error", RouteKind.ERROR, "abc-1"),
        ("POST", "/2018-06-01/runtime/init/error", RouteKind.INIT_ERROR, None),
        ("POST", "/2018-06-01/runtime/invocation/next", RouteKind.METHOD_NOT_ALLOWED, None),
        ("GET", "/2018-06-01/runtime/invocation/abc/response", RouteKind.METHOD_NOT_ALLOWED, None),
        ("GET", "/2018-06-01/runtime/other", RouteKind.NOT_FOUND, None),
        ("GET", "/", RouteKind.NOT_FOUND, None),
        ("GET", "/2018-06-01/runtime/invocation/next?x=1", RouteKind.NEXT, None),
    ],
)
def test_route(method: str, target: str, kind: RouteKind, rid: str | None) -> None:
    r = route(method, target)
    assert r.kind is kind
    assert r.request_id == rid


# -- the state machine --------------------------------------------------------------------------


def test_cold_start_hands_over_after_first_next() -> None:
    p = RuntimeProtocol()
    inv = make_inv()
    assert p.submit(inv) is False
    assert p.phase is Phase.INITIALIZING and not inv.handed_off
    got = p.next_invocation(now_ms=1_000)
    assert got is inv and inv.handed_off
    assert inv.deadline_ms == 4_000
    assert p.phase is Phase.INVOKING
    reply = p.response("req-1", b'"ok"')
    assert reply.status == 202 and json.loads(reply.body) == {"status": "OK"}
    assert inv.outcome is not None and inv.outcome.kind is OutcomeKind.RESPONSE
    assert inv.outcome.body == b'"ok"'
    assert p.phase is Phase.READY and not p.busy


def test_parked_next_then_submit() -> None:
    p = RuntimeProtocol()
    assert p.next_invocation(0) is None  # parks
    assert p.phase is Phase.READY and p.initialized
    inv = make_inv()
    p.submit(inv)
    assert p.next_invocation(0) is inv


def test_on_complete_called_once() -> None:
    p = RuntimeProtocol()
    calls: list[str] = []
    inv = make_inv()
    inv.on_complete = lambda: calls.append("done")
    inv.on_handoff = lambda: calls.append("handoff")
    p.submit(inv)
    p.next_invocation(0)
    p.error("req-1", b'{"errorType":"X"}', "Unhandled")
    p.exited(1)  # too late: already complete
    assert calls == ["handoff", "done"]
    assert inv.outcome is not None and inv.outcome.kind is OutcomeKind.ERROR
    assert inv.outcome.error_type == "Unhandled"


def test_wrong_request_id_is_rejected() -> None:
    p = RuntimeProtocol()
    inv = make_inv()
    p.submit(inv)
    p.next_invocation(0)
    reply = p.response("other", b"x")
    assert reply.status == 400 and b"InvalidRequestID" in reply.body
    assert inv.outcome is None
    assert p.response("req-1", b"x").status == 202
    # A second answer for the same id is an error too.
    assert p.response("req-1", b"y").status == 400


def test_busy_submit_raises() -> None:
    p = RuntimeProtocol()
    p.submit(make_inv("a"))
    with pytest.raises(ProtocolBusy):
        p.submit(make_inv("b"))


def test_init_error_fails_pending_and_later_submits() -> None:
    p = RuntimeProtocol()
    inv = make_inv()
    p.submit(inv)
    body = b'{"errorMessage":"Unable to import module","errorType":"Runtime.ImportModuleError","requestId":""}'
    assert p.init_failed(body, "Runtime.ImportModuleError").status == 202
    assert inv.outcome is not None and inv.outcome.kind is OutcomeKind.INIT_ERROR
    assert inv.outcome.body == body
    assert p.phase is Phase.FAILED
    # The exit that follows does not hide the init error.
    later = make_inv("b")
    assert p.submit(later) is True
    assert later.outcome is not None and later.outcome.kind is OutcomeKind.INIT_ERROR
    p.exited(1)
    last = make_inv("c")
    p.submit(last)
    assert last.outcome is not None and last.outcome.kind is OutcomeKind.INIT_ERROR


def test_init_error_after_init_is_rejected() -> None:
    p = RuntimeProtocol()
    p.next_invocation(0)
    assert p.init_failed(b"{}", None).status == 403


def test_exit_mid_invoke() -> None:
    p = RuntimeProtocol()
    inv = make_inv()
    p.submit(inv)
    p.next_invocation(0)
    p.exited(3)
    assert inv.outcome is not None and inv.outcome.kind is OutcomeKind.EXITED
    assert inv.outcome.exit_status == 3
    assert p.phase is Phase.CLOSED
    after = make_inv("b")
    assert p.submit(after) is True
    assert after.outcome is not None and after.outcome.kind is OutcomeKind.STOPPED


def test_too_large_response() -> None:
    p = RuntimeProtocol()
    inv = make_inv()
    p.submit(inv)
    p.next_invocation(0)
    assert p.response("req-1", b"", too_large=True).status == 202
    assert inv.outcome is not None and inv.outcome.kind is OutcomeKind.TOO_LARGE
    # the environment stays usable
    assert p.phase is Phase.READY


def test_abandon_after_timeout_allows_next_invocation() -> None:
    p = RuntimeProtocol()
    first = make_inv("a")
    p.submit(first)
    p.next_invocation(0)
    p.abandon(first)
    assert p.phase is Phase.READY and not p.busy
    assert p.response("a", b"late").status == 400
    second = make_inv("b")
    p.submit(second)
    assert p.next_invocation(0) is second


def test_next_without_answer_fails_current() -> None:
    p = RuntimeProtocol()
    first = make_inv("a")
    p.submit(first)
    p.next_invocation(0)
    assert p.next_invocation(0) is None
    assert first.outcome is not None and first.outcome.kind is OutcomeKind.ERROR


# -- the hot path's HTTP head parser ------------------------------------------------------------


def test_parse_head_plain_request() -> None:
    head = parse_head(
        b"POST /2018-06-01/runtime/invocation/x/error HTTP/1.1\r\nHost: h\r\n"
        b"Lambda-Runtime-Function-Error-Type: Runtime.Unknown\r\nContent-Length: 12\r\n"
        b"Expect: 100-continue"
    )
    assert head is not None
    assert head.method == "POST" and head.target.endswith("/x/error")
    assert head.content_length == 12 and head.keep_alive and head.expect_continue
    assert head.headers["lambda-runtime-function-error-type"] == "Runtime.Unknown"
    close = parse_head(b"GET /a HTTP/1.1\r\nConnection: close")
    assert close is not None and not close.keep_alive and close.content_length == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked",  # h11 handles chunked bodies
        b"GET /a HTTP/1.0",
        b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",
        b"POST /a HTTP/1.1\r\nContent-Length: -1",
        b"GET /a HTTP/1.1\r\n folded: header",
        b"GARBAGE",
    ],
)
def test_parse_head_leaves_the_rest_to_h11(raw: bytes) -> None:
    assert parse_head(raw) is None


def test_render_response_is_one_blob() -> None:
    out = render_response(202, [("Content-Type", "application/json")], b'{"status":"OK"}')
    assert out == (
        b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
        b'{"status":"OK"}'
    )


# -- the server on a real socket ----------------------------------------------------------------


async def _read_response(stream: trio.SocketStream) -> tuple[bytes, dict[bytes, bytes], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        assert data, "connection closed"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(b":", 1) for ln in lines[1:])}
    length = int(headers[b"content-length"])
    while len(rest) < length:
        data = await stream.receive_some(65536)
        assert data
        rest += data
    return lines[0], headers, rest[:length]


class RecordingStream(trio.abc.Stream):
    """Wraps one end of a memory stream and records every ``send_all``."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sends: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def setsockopt(self, *args: object) -> None:
        pass


async def test_server_keep_alive_round_trip(nursery: trio.Nursery) -> None:
    ports = PortAllocator(0, 0)
    listener, port = await ports.open_listener("127.0.0.1")
    server = RuntimeApiServer()
    await nursery.start(server.serve, listener)

    done = trio.Event()
    inv = make_inv("rid-7", b'{"hello":"world"}')
    inv.client_context = '{"custom":{"k":"v"}}'
    inv.on_complete = done.set

    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            # The runtime parks on /next before there is work.
            await stream.send_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
            await trio.testing.wait_all_tasks_blocked()
            assert server.init_done.is_set()
            server.submit(inv)
            status, headers, body = await _read_response(stream)
            assert status.startswith(b"HTTP/1.1 200 ")
            assert body == b'{"hello":"world"}'
            assert headers[b"lambda-runtime-aws-request-id"] == b"rid-7"
            assert headers[b"lambda-runtime-invoked-function-arn"].endswith(b":function:f")
            assert headers[b"lambda-runtime-trace-id"].startswith(b"Root=1-")
            assert int(headers[b"lambda-runtime-deadline-ms"]) > 0
            assert headers[b"lambda-runtime-client-context"] == b'{"custom":{"k":"v"}}'
            assert b"lambda-runtime-cognito-identity" not in headers
            # Same connection (keep-alive): post the response.
            await stream.send_all(
                b"POST /2018-06-01/runtime/invocation/rid-7/response HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 4\r\n\r\n\"ok\""
            )
            status, headers, body = await _read_response(stream)
            assert status.startswith(b"HTTP/1.1 202 ")
            assert json.loads(body) == {"status": "OK"}
            await done.wait()
            assert inv.outcome is not None and inv.outcome.body == b'"ok"'
            # Unknown paths answer 404, and the connection stays usable.
            await stream.send_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await _read_response(stream)
            assert status.startswith(b"HTTP/1.1 404 ")


async def test_server_writes_each_response_in_one_send(nursery: trio.Nursery) -> None:
    """Headers and body in one write: no Nagle / delayed-ACK stall on loopback."""
    left, right = trio.testing.memory_stream_pair()
    rec = RecordingStream(left)
    server = RuntimeApiServer()
    nursery.start_soon(server._serve_connection, rec)
    server.submit(make_inv("r1"))
    with trio.fail_after(5):
        await right.send_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b'{"a":1}' not in got:
            got += await right.receive_some(65536)
        await right.send_all(
            b"POST /2018-06-01/runtime/invocation/r1/error HTTP/1.1\r\nHost: x\r\n"
            b"Lambda-Runtime-Function-Error-Type: Unhandled\r\nContent-Length: 2\r\n\r\n{}"
        )
        while b'{"status":"OK"}' not in got:
            got += await right.receive_some(65536)
    assert len(rec.sends) == 2
    assert rec.sends[0].startswith(b"HTTP/1.1 200") and rec.sends[0].endswith(b'{"a":1}')
    assert rec.sends[1].startswith(b"HTTP/1.1 202") and rec.sends[1].endswith(b'{"status":"OK"}')


async def test_server_large_response_marked_too_large(nursery: trio.Nursery) -> None:
    listener, port = await PortAllocator(0, 0).open_listener("127.0.0.1")
    server = RuntimeApiServer()
    await nursery.start(server.serve, listener)
    inv = make_inv("big")
    server.submit(inv)
    size = MAX_RESPONSE_BYTES + 1
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
            await _read_response(stream)
            await stream.send_all(
                b"POST /2018-06-01/runtime/invocation/big/response HTTP/1.1\r\nHost: x\r\n"
                + f"Content-Length: {size}\r\n\r\n".encode() + b"x" * size
            )
            status, _, _ = await _read_response(stream)
    assert status.startswith(b"HTTP/1.1 202 ")
    assert inv.outcome is not None and inv.outcome.kind is OutcomeKind.TOO_LARGE


async def test_port_allocator_skips_used_ports_and_falls_back() -> None:
    # Find two free consecutive-ish ports by binding ephemerals, then build a 2-port range on them.
    probe, base = await PortAllocator(0, 0).open_listener("127.0.0.1")
    await probe.aclose()
    ports = PortAllocator(base, base + 1)
    l1, p1 = await ports.open_listener("127.0.0.1")
    l2, p2 = await ports.open_listener("127.0.0.1")
    l3, p3 = await ports.open_listener("127.0.0.1")  # range exhausted -> ephemeral
    try:
        assert {p1, p2} <= {base, base + 1} or p2 not in (base, base + 1)  # base+1 may be taken by others
        assert p1 == base
        assert len({p1, p2, p3}) == 3
        assert ports.in_use == 3
        ports.release(p1)
        await l1.aclose()
        l4, p4 = await ports.open_listener("127.0.0.1")
        assert p4 == base  # released port is handed out again
        await l4.aclose()
    finally:
        for lis in (l2, l3):
            await lis.aclose()


async def _serve_one(nursery: trio.Nursery) -> tuple[RuntimeApiServer, int]:
    listener, port = await PortAllocator(0, 0).open_listener("127.0.0.1")
    server = RuntimeApiServer()
    await nursery.start(server.serve, listener)
    return server, port


async def test_chunked_response_goes_through_h11(nursery: trio.Nursery) -> None:
    server, port = await _serve_one(nursery)
    inv = make_inv("c1")
    server.submit(inv)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
            await _read_response(stream)
            await stream.send_all(
                b"POST /2018-06-01/runtime/invocation/c1/response HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            status, _, body = await _read_response(stream)
            assert status.startswith(b"HTTP/1.1 202")
            # The connection keeps working (now through h11) for the next request.
            await stream.send_all(b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await _read_response(stream)
            assert status.startswith(b"HTTP/1.1 404")
    assert inv.outcome is not None and inv.outcome.body == b"hello world"


async def test_expect_100_continue(nursery: trio.Nursery) -> None:
    server, port = await _serve_one(nursery)
    inv = make_inv("e1")
    server.submit(inv)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
            await _read_response(stream)
            await stream.send_all(
                b"POST /2018-06-01/runtime/invocation/e1/response HTTP/1.1\r\nHost: x\r\n"
                b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n"
            )
            interim = b""
            while b"\r\n\r\n" not in interim:
                interim += await stream.receive_some(1024)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send_all(b"true")
            status, _, _ = await _read_response(stream)
            assert status.startswith(b"HTTP/1.1 202")
    assert inv.outcome is not None and inv.outcome.body == b"true"


async def test_init_error_over_the_wire(nursery: trio.Nursery) -> None:
    server, port = await _serve_one(nursery)
    inv = make_inv("i1")
    server.submit(inv)
    doc = b'{"errorMessage":"bad","errorType":"Runtime.ImportModuleError","requestId":"","stackTrace":[]}'
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"POST /2018-06-01/runtime/init/error HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Lambda-Runtime-Function-Error-Type: Runtime.ImportModuleError\r\n"
                + f"Content-Length: {len(doc)}\r\n\r\n".encode() + doc
            )
            status, headers, body = await _read_response(stream)
            assert status.startswith(b"HTTP/1.1 202") and headers[b"connection"] == b"close"
            assert await stream.receive_some(10) == b""  # closed as asked
    assert server.init_done.is_set()
    assert inv.outcome is not None and inv.outcome.kind is OutcomeKind.INIT_ERROR
    assert inv.outcome.body == doc and inv.outcome.error_type == "Runtime.ImportModuleError"


async def test_peer_gone_for_descriptors_over_1023() -> None:
    """A daemon with 200 warm containers holds over 1,000 descriptors: the check on a parked
    runtime's connection must not take a high descriptor number for a dead peer."""
    import resource
    import socket

    from flocid.runtime_api.server import _peer_gone

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low to open descriptor 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    a, b = socket.socketpair()
    filler = [os.dup(a.fileno()) for _ in range(1030)]
    try:
        high = socket.socket(fileno=os.dup(b.fileno()))
        assert high.fileno() > 1023
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(high))
        assert _peer_gone(stream) is False  # idle: the runtime waits for its invocation
        a.sendall(b"x")
        assert _peer_gone(stream) is True  # data while parked: a protocol violation
        high.recv(1)
        a.close()
        for fd in filler:
            os.close(fd)
        filler = []
        assert _peer_gone(stream) is True  # EOF: the runtime died
        await stream.aclose()
    finally:
        for fd in filler:
            os.close(fd)
        a.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
