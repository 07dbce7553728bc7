"""The API port's own HTTP/1.1 loop (flocid.front): the head parser, and a live server on loopback
with small ASGI apps and a fake Invoke app at the seam (the real apps are exercised through it by
the api, e2e and integration tiers)."""

from __future__ import annotations

import json
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

    async def respond(self, path: str, query: bytes, headers: dict[str, str], payload: bytes,
                      complete: bool) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        self.calls.append(("fast", payload))
        self.entered.set()
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
