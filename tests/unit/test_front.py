"""The API port's own HTTP/1.1 loop (flocid.front): the head parser, and a live server on loopback
with small ASGI apps and a fake Invoke app at the seam (the real apps are exercised through it by
the api, e2e and integration tiers)."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from flocid.config import Settings
from flocid.daemon import open_api_sockets, serve_api
from flocid.front import parse_request_head
from flocid.gateway import Gateway

INVOKE = b"/2015-03-31/functions/f/invocations"


def test_parse_plain_request() -> None:
    head = parse_request_head(b"POST /a%20b?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Y:  v \r\nX-Y: w")
    assert head is not None
    assert (head.method, head.path, head.query, head.content_length) == ("POST", b"/a%20b", b"x=1", 3)
    # repeated headers are kept in order, names lower-cased, values stripped
    assert head.headers == [(b"host", b"h"), (b"content-length", b"3"), (b"x-y", b"v"), (b"x-y", b"w")]
    assert head.keep_alive and not head.expect_continue


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.0",  # HTTP/1.0: hypercorn's
    b"GET http://h/ HTTP/1.1\r\nHost: h",  # absolute-form target
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1",
    b"POST / HTTP/1.1\r\nContent-Length: -1",
    b"GET / HTTP/1.1\r\nX: a\r\n  folded",  # obs-fold
    b"GET / HTTP/1.1\r\nX : a",  # space before the colon
    b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket",
    b"PUT / HTTP/1.1\r\nExpect: something-else",
    b"GET /\xff HTTP/1.1",
    b"garbage",
])
def test_unusual_requests_go_to_hypercorn(raw: bytes) -> None:
    assert parse_request_head(raw) is None


def test_connection_and_expect() -> None:
    head = parse_request_head(b"PUT /b/k HTTP/1.1\r\nConnection: keep-alive, Close\r\nExpect: 100-Continue")
    assert head is not None and not head.keep_alive and head.expect_continue


class FakeInvoke:
    """The seam: what flocid.front calls for Invoke (``respond``) and hypercorn calls (ASGI)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.hold: trio.Event | None = None
        self.entered = trio.Event()
        self.fail = False

    async def respond(self, path: str, query: bytes, headers: dict[str, str], payload: bytes,
                      complete: bool) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        self.calls.append(("fast", payload))
        self.entered.set()
        if self.fail:
            raise RuntimeError("a bug")
        if self.hold is not None:
            await self.hold.wait()
        body = json.dumps({"path": path, "query": query.decode(), "len": len(payload),
                           "type": headers.get("x-amz-invocation-type")}).encode()
        return 200, [(b"x-amz-executed-version", b"$LATEST")], body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.calls.append(("asgi", body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi"})


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """Any other request: echoes what it got; /stream streams, /boom fails, /silent never answers."""
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            await send({"type": m["type"] + ".complete"})
            if m["type"] == "lifespan.shutdown":
                return
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/silent":
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one,", b"", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    out = json.dumps({"method": scope["method"], "path": path, "raw_path": scope["raw_path"].decode(),
                      "query": scope["query_string"].decode(), "body": body.decode("latin-1"),
                      "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]]}).encode()
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]})
    await send({"type": "http.response.body", "body": out})


@attrs.define
class Live:
    port: int
    gateway: Gateway
    fake: FakeInvoke


@asynccontextmanager
async def live_server() -> AsyncIterator[Live]:
    settings = attrs.evolve(Settings.from_env({}), host="127.0.0.1", port=0, listen_docker_bridge=False)
    sockets, port = open_api_sockets(settings)
    fake = FakeInvoke()
    gateway = Gateway(echo, invoke_app=fake)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_api, gateway, sockets)
        yield Live(port, gateway, fake)
        nursery.cancel_scope.cancel()


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError
        self.buf += data

    async def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            await self._fill()
        i = self.buf.index(b"\r\n")
        out = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return out

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def response(self, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        status = int((await self.line()).split(b" ")[1])
        headers: dict[str, str] = {}
        while line := await self.line():
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        if head or status in (100, 204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(await self.line(), 16):
                body += await self.exactly(size)
                assert await self.line() == b""
            assert await self.line() == b""
            return status, headers, body
        return status, headers, await self.exactly(int(headers["content-length"]))

    async def closed(self) -> bool:
        with trio.move_on_after(5):
            try:
                await self._fill()
            except EOFError:
                return True
        return False


async def connect(live: Live) -> Client:
    return Client(await trio.open_tcp_stream("127.0.0.1", live.port))


def request(method: str, path: bytes, body: bytes = b"", extra: bytes = b"") -> bytes:
    return (b"%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n%s\r\n" % (
        method.encode(), path, len(body), extra)) + body


async def test_pipelined_invokes_on_the_fast_path_and_other_requests_between() -> None:
    async with live_server() as live:
        c = await connect(live)
        await c.stream.send_all(
            request("POST", INVOKE, b'{"a":1}', b"X-Amz-Invocation-Type: RequestResponse\r\n")
            + request("GET", b"/2015-03-31/functions/?MaxItems=1")
            + request("POST", INVOKE + b"?Qualifier=2", b"{}"))
        s1, h1, b1 = await c.response()
        s2, _h2, b2 = await c.response()
        s3, _h3, b3 = await c.response()
        assert (s1, s2, s3) == (200, 201, 200)
        assert json.loads(b1) == {"path": INVOKE.decode(), "query": "", "len": 7, "type": "RequestResponse"}
        assert h1["x-amz-executed-version"] == "$LATEST" and "date" in h1
        assert json.loads(b2)["query"] == "MaxItems=1"
        assert json.loads(b3)["query"] == "Qualifier=2"
        assert live.fake.calls == [("fast", b'{"a":1}'), ("fast", b"{}")]
        with trio.fail_after(5):  # in flight until written: it may still be counted as the client reads
            await live.gateway.wait_idle()


async def test_in_flight_counts_fast_invokes() -> None:
    async with live_server() as live:
        live.fake.hold = trio.Event()
        c = await connect(live)
        await c.stream.send_all(request("POST", INVOKE, b"{}"))
        with trio.fail_after(5):
            await live.fake.entered.wait()
        assert live.gateway.in_flight == 1
        live.fake.hold.set()
        assert (await c.response())[0] == 200
        with trio.fail_after(5):
            await live.gateway.wait_idle()


async def test_expect_100_continue_body_and_repeated_headers() -> None:
    async with live_server() as live:
        c = await connect(live)
        body = b"x" * 200_000
        await c.stream.send_all(request("PUT", b"/bucket/a%2Fb", extra=b"Expect: 100-continue\r\nX-A: 1\r\nX-A: 2\r\n")
                                .replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)))
        assert (await c.response())[0] == 100
        await c.stream.send_all(body)
        status, _h, out = await c.response()
        got = json.loads(out)
        assert status == 201 and got["path"] == "/bucket/a/b" and got["raw_path"] == "/bucket/a%2Fb"
        assert len(got["body"]) == len(body)
        assert [v for k, v in got["headers"] if k == "x-a"] == ["1", "2"]
        # the connection is still good
        await c.stream.send_all(request("GET", b"/again"))
        assert json.loads((await c.response())[2])["path"] == "/again"


async def test_streamed_response_is_chunked_and_head_has_no_body() -> None:
    async with live_server() as live:
        c = await connect(live)
        await c.stream.send_all(request("GET", b"/stream"))
        status, headers, body = await c.response()
        assert status == 200 and headers["transfer-encoding"] == "chunked" and body == b"one,two,three"
        await c.stream.send_all(request("HEAD", b"/x"))
        status, headers, body = await c.response(head=True)
        assert status == 201 and int(headers["content-length"]) > 0
        await c.stream.send_all(request("GET", b"/after-head"))
        assert json.loads((await c.response())[2])["path"] == "/after-head"


async def test_app_errors_answer_500_and_keep_the_connection() -> None:
    async with live_server() as live:
        c = await connect(live)
        for path in (b"/boom", b"/silent"):
            await c.stream.send_all(request("GET", path))
            status, _h, body = await c.response()
            assert (status, body) == (500, b"Internal Server Error")
        await c.stream.send_all(request("GET", b"/ok"))
        assert (await c.response())[0] == 201


async def test_connection_close_is_honoured() -> None:
    async with live_server() as live:
        for path in (INVOKE, b"/other"):
            c = await connect(live)
            await c.stream.send_all(request("POST", path, b"{}", b"Connection: close\r\n"))
            _s, headers, _b = await c.response()
            assert headers["connection"] == "close"
            assert await c.closed()


async def test_chunked_bodies_and_http10_are_served_by_hypercorn() -> None:
    async with live_server() as live:
        c = await connect(live)
        await c.stream.send_all(b"POST /chunky HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        status, _h, body = await c.response()
        assert status == 201 and json.loads(body)["body"] == "abcde"
        # the rest of that connection stays with hypercorn, Invoke included (its ASGI form)
        await c.stream.send_all(request("POST", INVOKE, b"{}"))
        assert (await c.response())[2] == b"asgi"
        c = await connect(live)
        await c.stream.send_all(b"GET /old HTTP/1.0\r\n\r\n")
        status, _h, body = await c.response()
        assert status == 201 and json.loads(body)["path"] == "/old"


async def test_oversized_heads_and_bodies() -> None:
    async with live_server() as live:
        c = await connect(live)
        await c.stream.send_all(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        status, _h, _b = await c.response()
        assert status == 431 and await c.closed()
        # an Invoke body over 6 MB goes to the ASGI form (which reads and drops it: the 413 is InvokeApp's)
        c = await connect(live)
        await c.stream.send_all(request("POST", INVOKE, b"x" * (6 * 1024 * 1024 + 1)))
        assert (await c.response())[2] == b"asgi"
        assert live.fake.calls[-1] == ("asgi", b"x" * (6 * 1024 * 1024 + 1))


async def test_unread_body_is_drained_and_the_connection_kept() -> None:
    async def ignore_body(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with live_server() as live:
        live.gateway.lambda_app = ignore_body
        c = await connect(live)
        await c.stream.send_all(request("PUT", b"/x", b"y" * 100_000) + request("PUT", b"/z", b"w"))
        assert (await c.response())[0] == 204
        assert (await c.response())[0] == 204


@examples(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parser_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    head = parse_request_head(raw)
    if head is not None:
        assert head.method.isalpha() and head.path.startswith(b"/") and head.content_length >= 0


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda t: t not in ("content-length", "transfer-encoding", "upgrade", "connection", "expect"))


@examples(max_examples=200, deadline=None)
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]),
       path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/%-._~", max_size=40),
       query=st.text(alphabet="abc=&%0123456789", max_size=20),
       headers=st.lists(st.tuples(_token, st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ,;=/", max_size=20)),
                        max_size=8),
       length=st.integers(min_value=0, max_value=10**9))
def test_parser_reads_back_what_a_client_writes(method: str, path: str, query: str,
                                                headers: list[tuple[str, str]], length: int) -> None:
    target = "/" + path + ("?" + query if query else "")
    raw = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    raw += f"Content-Length: {length}"
    head = parse_request_head(raw.encode())
    assert head is not None
    assert (head.method, head.path, head.query) == (method, ("/" + path).encode(), query.encode())
    assert head.content_length == length and head.keep_alive and not head.expect_continue
    assert head.headers[:-1] == [(k.encode(), v.strip(" \t").encode()) for k, v in headers]


# ---- framing, disconnects and edge cases, against what hypercorn/h11 did and RFC 9112 ----------------


@attrs.define
class Probe:
    """An ASGI app for the edge cases: each path answers in one odd way, and records what it saw."""

    seen: list[dict[str, Any]] = attrs.Factory(list)
    events: list[str] = attrs.Factory(list)
    done: trio.Event = attrs.Factory(trio.Event)
    entered: trio.Event = attrs.Factory(trio.Event)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self._answer(scope, receive, send)
        finally:
            self.done.set()

    async def _answer(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        self.seen.append({"method": scope["method"], "path": path, "headers": list(scope["headers"])})
        if path == "/no-read":  # answers without reading the request body
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            m = await receive()
            if m["type"] == "http.disconnect":
                self.events.append("disconnect-in-body")
                return
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        self.entered.set()
        status = 200
        headers: list[tuple[bytes, bytes]] = []
        parts: list[bytes] = [b"hello"]
        if path == "/short":  # declares more than it sends
            headers = [(b"content-length", b"10")]
        elif path == "/long":  # declares less than it sends
            headers = [(b"content-length", b"3")]
        elif path == "/long-streamed":
            headers = [(b"content-length", b"6")]
            parts = [b"abcd", b"efgh"]
        elif path == "/204":
            status, headers, parts = 204, [(b"content-length", b"0")], [b"ignored"]
        elif path == "/304":
            status, headers, parts = 304, [(b"content-length", b"1234"), (b"etag", b'"e"')], [b""]
        elif path == "/1xx":
            status = 103
        elif path == "/inject":
            headers = [(b"x-a", b"1\r\nx-injected: yes")]
        elif path == "/app-close":
            headers = [(b"connection", b"close")]
        elif path == "/app-chunked":
            headers = [(b"transfer-encoding", b"chunked")]
        elif path == "/wait-disconnect":  # a slow app that watches for the client going away (as Quart does)
            with trio.move_on_after(0.5):
                m = await receive()
                self.events.append(m["type"])
                return
            self.events.append("still there")
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})


@asynccontextmanager
async def probe_server() -> AsyncIterator[tuple[Live, Probe]]:
    async with live_server() as live:
        probe = Probe()
        live.gateway.lambda_app = probe
        yield live, probe


async def read_to_eof(c: Client) -> bytes:
    with trio.fail_after(5):
        while True:
            try:
                await c._fill()
            except EOFError:
                return bytes(c.buf)


async def test_response_shorter_than_its_content_length_closes_the_connection() -> None:
    # h11 refused to end such a message and hypercorn closed the connection: the client sees a short
    # body and EOF, never a hang on a connection that looks reusable
    async with probe_server() as (live, _probe):
        c = await connect(live)
        await c.stream.send_all(request("GET", b"/short"))
        assert (await c.line()).startswith(b"HTTP/1.1 200")
        raw = await read_to_eof(c)
        assert raw.endswith(b"\r\n\r\nhello")


async def test_response_longer_than_its_content_length_is_refused() -> None:
    async with probe_server() as (live, _probe):
        # all in the first body message: nothing was written yet, so a 500 (as hypercorn's)
        c = await connect(live)
        await c.stream.send_all(request("GET", b"/long") + request("GET", b"/after"))
        status, _h, body = await c.response()
        assert (status, body) == (500, b"Internal Server Error")
        assert (await c.response())[2] == b"hello"  # the connection stayed in step
        # over the limit in a later message: the client gets the declared bytes, then EOF
        c = await connect(live)
        await c.stream.send_all(request("GET", b"/long-streamed") + request("GET", b"/after"))
        raw = await read_to_eof(c)
        assert raw.endswith(b"\r\n\r\nabcd") and raw.count(b"HTTP/1.1") == 1


async def test_no_body_statuses_and_head() -> None:
    async with probe_server() as (live, _probe):
        c = await connect(live)
        # 204: no body and no Content-Length (RFC 9110 8.6), the connection stays in step
        await c.stream.send_all(request("GET", b"/204"))
        status, headers, _b = await c.response()
        assert status == 204 and "content-length" not in headers and "transfer-encoding" not in headers
        # 304: the app's Content-Length kept (it describes the 200), no body
        await c.stream.send_all(request("GET", b"/304"))
        status, headers, _b = await c.response()
        assert status == 304 and headers["content-length"] == "1234"
        # HEAD without Content-Length: the one a GET would get (RFC 9110 9.3.2), no body
        await c.stream.send_all(request("HEAD", b"/plain"))
        status, headers, _b = await c.response(head=True)
        assert status == 200 and headers["content-length"] == "5"
        # HEAD with its own Content-Length: kept, no body
        await c.stream.send_all(request("HEAD", b"/short"))
        status, headers, _b = await c.response(head=True)
        assert status == 200 and headers["content-length"] == "10"
        await c.stream.send_all(request("GET", b"/plain"))
        assert (await c.response())[2] == b"hello"


async def test_an_app_starting_with_1xx_or_bad_headers_gets_a_500() -> None:
    async with probe_server() as (live, probe):
        c = await connect(live)
        for path in (b"/1xx", b"/inject"):
            await c.stream.send_all(request("GET", path))
            status, headers, body = await c.response()
            assert (status, body) == (500, b"Internal Server Error") and "x-injected" not in headers
        await c.stream.send_all(request("GET", b"/plain"))
        assert (await c.response())[2] == b"hello"
        assert len(probe.seen) == 3


async def test_app_connection_close_and_transfer_encoding_are_the_servers() -> None:
    async with probe_server() as (live, _probe):
        c = await connect(live)
        await c.stream.send_all(request("GET", b"/app-chunked"))
        status, headers, body = await c.response()
        assert body == b"hello" and headers["content-length"] == "5" and "transfer-encoding" not in headers
        await c.stream.send_all(request("GET", b"/app-close"))
        raw = await read_to_eof(c)
        assert raw.lower().count(b"connection: close") == 1 and raw.endswith(b"hello")


async def test_a_client_gone_while_the_app_works_is_an_http_disconnect() -> None:
    async with probe_server() as (live, probe):
        c = await connect(live)
        await c.stream.send_all(request("POST", b"/wait-disconnect", b"{}"))
        with trio.fail_after(5):
            await probe.entered.wait()
        await c.stream.aclose()
        with trio.fail_after(5):
            await probe.done.wait()
            await live.gateway.wait_idle()
        assert probe.events == ["http.disconnect"]


async def test_pipelined_requests_then_eof_are_all_answered() -> None:
    # watching for a disconnect stops at the next request (kept, served next), as h11 paused:
    # a client that pipelines and half-closes is not taken for gone
    async with probe_server() as (live, probe):
        c = await connect(live)
        await c.stream.send_all(request("POST", b"/wait-disconnect", b"{}"))
        with trio.fail_after(5):
            await probe.entered.wait()
        await c.stream.send_all(request("GET", b"/plain"))
        await c.stream.send_eof()
        assert (await c.response())[2] == b"hello"
        assert (await c.response())[2] == b"hello"
        assert probe.events == ["still there"]
        assert await c.closed()


async def test_body_shorter_than_content_length_then_eof() -> None:
    async with probe_server() as (live, probe):
        c = await connect(live)
        await c.stream.send_all(request("PUT", b"/x", b"0123456789")[:-4])
        await c.stream.send_eof()
        with trio.fail_after(5):
            await probe.done.wait()
            await live.gateway.wait_idle()
        assert probe.events == ["disconnect-in-body"]
        assert await read_to_eof(c) == b""  # nothing more to say to a client gone
        # an Invoke is not run on a cut body
        c = await connect(live)
        await c.stream.send_all(request("POST", INVOKE, b'{"a":1}')[:-2])
        await c.stream.send_eof()
        assert await c.closed()
        assert live.fake.calls == [] and live.gateway.in_flight == 0


async def test_expect_continue_answered_without_reading_the_body_closes() -> None:
    # the client may never send the body it announced (RFC 9110 10.1.1): hypercorn closed the connection
    async with probe_server() as (live, _probe):
        c = await connect(live)
        await c.stream.send_all(request("PUT", b"/no-read", extra=b"Expect: 100-continue\r\n")
                                .replace(b"Content-Length: 0", b"Content-Length: 5000"))
        status, headers, body = await c.response()
        assert (status, body, headers.get("connection")) == (200, b"ok", "close")
        assert await c.closed()


async def test_a_big_unread_body_is_announced_with_connection_close() -> None:
    async with probe_server() as (live, _probe):
        c = await connect(live)
        await c.stream.send_all(request("PUT", b"/no-read").replace(b"Content-Length: 0", b"Content-Length: 50000000"))
        status, headers, _b = await c.response()
        assert status == 200 and headers.get("connection") == "close"
        assert await c.closed()


async def test_slow_reader_of_a_streamed_response_gets_it_all() -> None:
    total = 8 * 1024 * 1024

    async def big(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(total // 65536):
            await send({"type": "http.response.body", "body": b"z" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with live_server() as live:
        live.gateway.lambda_app = big
        c = await connect(live)
        await c.stream.send_all(request("GET", b"/big"))
        await trio.sleep(0.3)  # the server is blocked on a full socket meanwhile
        with trio.fail_after(20):
            status, headers, body = await c.response()
        assert status == 200 and headers["transfer-encoding"] == "chunked" and len(body) == total
        with trio.fail_after(5):
            await live.gateway.wait_idle()


async def test_a_client_gone_mid_stream(caplog: pytest.LogCaptureFixture) -> None:
    """A RESPONSE_STREAM-like app: a producer streams while a watcher waits for the disconnect, in
    one nursery (as Quart runs them). The client reads a little and leaves: the app sees it (send
    raises an OSError, receive gives http.disconnect), nothing is logged as unexpected, no request
    stays in flight."""
    seen: list[str] = []
    finished = trio.Event()

    async def streamer(scope: Any, receive: Any, send: Any) -> None:
        try:
            while (await receive()).get("more_body"):
                pass

            async def produce() -> None:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                try:
                    while True:
                        await send({"type": "http.response.body", "body": b"x" * 4096, "more_body": True})
                        await trio.sleep(0.01)
                except OSError:
                    seen.append("send raised")
                    raise

            async def watch() -> None:
                m = await receive()
                seen.append(m["type"])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                nursery.start_soon(watch)
        finally:
            finished.set()

    async with live_server() as live:
        live.gateway.lambda_app = streamer
        c = await connect(live)
        await c.stream.send_all(request("GET", b"/stream-forever"))
        with trio.fail_after(5):
            while len(c.buf) < 20_000:
                await c._fill()
        c.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
        await c.stream.aclose()
        with trio.fail_after(5):
            await finished.wait()
            await live.gateway.wait_idle()
        assert "http.disconnect" in seen or "send raised" in seen
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_slow_invoke_whose_client_left_runs_to_its_end(caplog: pytest.LogCaptureFixture) -> None:
    # as InvokeApp under hypercorn: the invoke is not cancelled, it stays in flight until it ends
    async with live_server() as live:
        live.fake.hold = trio.Event()
        c = await connect(live)
        await c.stream.send_all(request("POST", INVOKE, b"{}"))
        with trio.fail_after(5):
            await live.fake.entered.wait()
        await c.stream.aclose()
        await trio.sleep(0.1)
        assert live.gateway.in_flight == 1
        live.fake.hold.set()
        with trio.fail_after(5):
            await live.gateway.wait_idle()
        assert live.fake.calls == [("fast", b"{}")]
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_an_invoke_that_fails_unexpectedly_answers_500_and_the_server_lives_on() -> None:
    async with live_server() as live:
        live.fake.fail = True
        c = await connect(live)
        await c.stream.send_all(request("POST", INVOKE, b"{}"))
        status, _h, _b = await c.response()
        assert status == 500
        await c.stream.send_all(request("GET", b"/fine"))
        assert (await c.response())[0] == 201
        with trio.fail_after(5):
            await live.gateway.wait_idle()


async def test_head_byte_by_byte_and_leading_blank_lines() -> None:
    async with live_server() as live:
        c = await connect(live)
        raw = b"\r\n" + request("POST", b"/slow", b"abc", b"X-Long: " + b"v" * 2000 + b"\r\n")
        for i in range(len(raw)):
            await c.stream.send_all(raw[i:i + 1])
        status, _h, body = await c.response()
        assert status == 201 and json.loads(body)["body"] == "abc"


async def test_request_line_edge_cases() -> None:
    async with live_server() as live:
        c = await connect(live)
        # a lower-case method: upper-cased, as hypercorn did (an Invoke stays an Invoke)
        await c.stream.send_all(request("get", b"/lower") + request("post", INVOKE, b"{}"))
        assert json.loads((await c.response())[2])["method"] == "GET"
        assert (await c.response())[0] == 200 and live.fake.calls == [("fast", b"{}")]
        # OPTIONS * goes to hypercorn, which keeps the connection
        await c.stream.send_all(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n" + request("GET", b"/next"))
        assert json.loads((await c.response())[2])["path"] == "*"
        assert json.loads((await c.response())[2])["path"] == "/next"


async def test_content_length_too_long_to_be_a_number_is_a_400_not_a_crash() -> None:
    async with live_server() as live:
        c = await connect(live)
        await c.stream.send_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
        assert (await c.response())[0] == 400
        c = await connect(live)
        await c.stream.send_all(request("GET", b"/alive"))
        assert (await c.response())[0] == 201


async def test_many_headers_and_obs_text_values_reach_the_app_unchanged() -> None:
    async with probe_server() as (live, probe):
        c = await connect(live)
        many = b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(3000))
        await c.stream.send_all(request("GET", b"/plain", extra=many + b"X-Latin: caf\xe9 \xff\x80 z\r\n"))
        assert (await c.response())[2] == b"hello"
        headers = probe.seen[0]["headers"]
        assert len([h for h in headers if h[0].startswith(b"x-h")]) == 3000
        assert (b"x-latin", b"caf\xe9 \xff\x80 z") in headers


@pytest.mark.parametrize("raw", [
    b"GET /lf HTTP/1.1\r\nHost: h\r\nX-A: a\nContent-Length: 3\r\n\r\nabc",  # a bare LF ends a line for h11
    b"GET /nul HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    b"GET /cr HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
])
async def test_control_characters_in_a_head_never_reach_an_app_as_values(raw: bytes) -> None:
    async with probe_server() as (live, probe):
        c = await connect(live)
        await c.stream.send_all(raw)
        with trio.fail_after(5):
            await c.response()
        for seen in probe.seen:
            for _k, v in seen["headers"]:
                assert not set(v) & {0, 10, 13}, v


async def test_keep_alive_idle_timeout_and_a_trickled_head(monkeypatch: pytest.MonkeyPatch) -> None:
    import flocid.front

    monkeypatch.setattr(flocid.front, "KEEP_ALIVE_S", 0.5)
    async with live_server() as live:
        c = await connect(live)
        await c.stream.send_all(request("GET", b"/one"))
        assert (await c.response())[0] == 201
        start = trio.current_time()
        assert await c.closed()
        assert 0.4 < trio.current_time() - start < 3
        # a head that never completes is closed by the same deadline, however it trickles in
        c = await connect(live)
        start = trio.current_time()
        with trio.fail_after(5):
            try:
                for byte in b"GET /slowloris HTTP/1.1\r\nHost: h\r\nX: " + b"y" * 100:
                    await c.stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)
            except trio.BrokenResourceError:
                pass
        assert await c.closed()
        assert trio.current_time() - start < 3


async def test_idle_connections_do_not_hold_up_a_graceful_stop() -> None:
    async with live_server() as live:
        idle = await connect(live)
        await idle.stream.send_all(request("GET", b"/one"))
        assert (await idle.response())[0] == 201
        half = await connect(live)
        await half.stream.send_all(b"GET /half HTTP/1.1\r\nHo")
        with trio.fail_after(1):
            await live.gateway.wait_idle()


async def test_handed_off_connections_keep_working(caplog: pytest.LogCaptureFixture) -> None:
    async with live_server() as live:
        # Upgrade (not one hypercorn takes): served as plain HTTP/1.1, and so is the pipelined rest
        c = await connect(live)
        await c.stream.send_all(request("GET", b"/up", extra=b"Connection: Upgrade\r\nUpgrade: foo/2\r\n")
                                + request("POST", INVOKE, b"{}") + request("GET", b"/third"))
        assert json.loads((await c.response())[2])["path"] == "/up"
        assert (await c.response())[2] == b"asgi"
        assert json.loads((await c.response())[2])["path"] == "/third"
        # HTTP/1.0 after HTTP/1.1 requests on the same connection: answered, then closed (h11 keeps
        # no HTTP/1.0 connection alive); a request sent meanwhile meets no server error
        c = await connect(live)
        await c.stream.send_all(request("GET", b"/first"))
        assert (await c.response())[0] == 201
        await c.stream.send_all(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert json.loads((await c.response())[2])["path"] == "/old"
        with contextlib.suppress(trio.BrokenResourceError):
            await c.stream.send_all(request("GET", b"/x"))
        assert await read_to_eof(c) == b""
        with trio.fail_after(5):
            await live.gateway.wait_idle()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
