"""HTTP-level behaviour of the API server that SDKs depend on."""

from __future__ import annotations

import socket

import trio

from flocid.daemon import Daemon


async def test_a_keep_alive_connection_serves_thousands_of_requests(daemon: Daemon) -> None:
    """hypercorn closes a connection after 1000 requests by default, racing the last response (it
    was lost now and then); SDKs keep one connection for thousands of calls."""
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)

    def run() -> int:
        ok = 0
        with socket.create_connection((host, int(port)), timeout=10) as s:
            req = f"GET /2015-03-31/functions/ HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
            for _ in range(1100):
                s.sendall(req)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = s.recv(65536)
                    assert chunk, f"connection closed after {ok} requests"
                    buf += chunk
                head, _, rest = buf.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                assert b"connection: close" not in head.lower(), f"server closed after {ok + 1} requests"
                length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
                while len(rest) < length:
                    rest += s.recv(65536)
                ok += 1
        return ok

    assert await trio.to_thread.run_sync(run) == 1100
