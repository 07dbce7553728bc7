"""The embedded DNS responder against a fake upstream on loopback (never a real resolver).

Each test starts ``serve_dns`` on 127.0.0.1 port 0 with explicit upstreams, so nothing leaves the
machine and nothing depends on /etc/resolv.conf.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trio

from flocid.config import Settings
from flocid.dns import bind_udp_tcp, fit_for_udp, is_local, local_answer, parse_resolv_conf, serve_dns

ANSWER_IP = "172.17.0.1"
UPSTREAM_IP = "10.9.8.7"


def settings(tmp_path: Path) -> Settings:
    return Settings(port=0, data_dir=tmp_path, executor="none", hostname="flocid.test")


@attrs.define
class FakeUpstream:
    """A loopback resolver: answers A queries with ``UPSTREAM_IP`` (``records`` of them), or stays
    silent, or truncates over UDP and answers in full over TCP."""

    mode: str = "answer"
    records: int = 1
    udp_queries: list[str] = attrs.field(factory=list)
    tcp_queries: list[str] = attrs.field(factory=list)
    address: tuple[str, int] = ("127.0.0.1", 0)

    def reply(self, wire: bytes, *, truncate: bool) -> bytes:
        q = dns.message.from_wire(wire)
        resp = dns.message.make_response(q)
        if truncate:
            resp.flags |= dns.flags.TC
            return resp.to_wire()
        name = q.question[0].name
        ips = [f"10.9.{i // 250}.{i % 250 + 1}" for i in range(self.records - 1)]
        resp.answer.append(dns.rrset.from_text_list(name, 30, "IN", "A", [UPSTREAM_IP, *ips]))
        return resp.to_wire()

    async def serve(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        udp, tcp = await bind_udp_tcp("127.0.0.1", 0)
        with udp, tcp:
            port = udp.getsockname()[1]
            self.address = ("127.0.0.1", port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, self._tcp_client, [trio.SocketListener(tcp)])
                task_status.started(self.address)
                while True:
                    wire, peer = await udp.recvfrom(65535)
                    self.udp_queries.append(dns.message.from_wire(wire).question[0].name.to_text())
                    if self.mode == "silent":
                        continue
                    await udp.sendto(self.reply(wire, truncate=self.mode == "truncate"), peer)

    async def _tcp_client(self, stream: trio.SocketStream) -> None:
        async with stream:
            size = struct.unpack("!H", await _exactly(stream, 2))[0]
            wire = await _exactly(stream, size)
            self.tcp_queries.append(dns.message.from_wire(wire).question[0].name.to_text())
            out = self.reply(wire, truncate=False)
            await stream.send_all(struct.pack("!H", len(out)) + out)


async def _exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        assert chunk, "peer closed early"
        buf += chunk
    return buf


async def udp_query(server: tuple[str, int], name: str, rdtype: str = "A", *, edns: int = -1) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=edns if edns >= 0 else False,
                               payload=4096 if edns >= 0 else 512)
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.connect(server)
        await sock.send(q.to_wire())
        with trio.fail_after(10):
            data = await sock.recv(65535)
    resp = dns.message.from_wire(data)
    assert resp.id == q.id
    return resp


async def tcp_query(server: tuple[str, int], name: str, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    wire = q.to_wire()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(*server)
        async with stream:
            await stream.send_all(struct.pack("!H", len(wire)) + wire)
            size = struct.unpack("!H", await _exactly(stream, 2))[0]
            return dns.message.from_wire(await _exactly(stream, size))


def a_records(resp: dns.message.Message) -> list[str]:
    return [r.address for rrset in resp.answer if rrset.rdtype == dns.rdatatype.A for r in rrset]


StartDns = Callable[..., Any]


@pytest.fixture
def start_dns(tmp_path: Path, nursery: trio.Nursery) -> StartDns:
    async def start(upstreams: list[tuple[str, int]], **kw: Any) -> tuple[str, int]:
        addr: tuple[str, int] = await nursery.start(lambda task_status: serve_dns(
            settings(tmp_path), host="127.0.0.1", port=0, answer_ip=ANSWER_IP, upstreams=upstreams,
            extra_suffixes=("localhost.localstack.cloud",), task_status=task_status, **kw))
        return addr
    return start


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> FakeUpstream:
    fake = FakeUpstream()
    await nursery.start(fake.serve)
    return fake


# ---- answered locally ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "localhost.floci.io", "LocalHost.Floci.IO.", "my-bucket.localhost.floci.io",
    "a.b.c.s3.localhost.floci.io", "flocid.test", "sqs.flocid.test",
    "localhost.localstack.cloud", "bucket.s3.localhost.localstack.cloud",
])
async def test_local_names_answer_with_the_flocid_address(start_dns: StartDns, upstream: FakeUpstream,
                                                          name: str) -> None:
    server = await start_dns([upstream.address])
    resp = await udp_query(server, name)
    assert resp.rcode() == dns.rcode.NOERROR
    assert resp.flags & dns.flags.AA
    assert a_records(resp) == [ANSWER_IP]
    assert resp.answer[0].ttl == 60
    assert upstream.udp_queries == []  # never forwarded


async def test_aaaa_for_local_names_is_noerror_and_empty(start_dns: StartDns, upstream: FakeUpstream) -> None:
    server = await start_dns([upstream.address])
    resp = await udp_query(server, "bucket.localhost.floci.io", "AAAA")
    assert resp.rcode() == dns.rcode.NOERROR
    assert resp.answer == []
    assert upstream.udp_queries == []


async def test_local_names_answer_over_tcp_too(start_dns: StartDns, upstream: FakeUpstream) -> None:
    server = await start_dns([upstream.address])
    resp = await tcp_query(server, "x.localhost.floci.io")
    assert a_records(resp) == [ANSWER_IP]


# ---- forwarded -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["example.com", "notlocalhost.floci.io", "floci.io", "flocid.test.example"])
async def test_other_names_are_forwarded_and_relayed(start_dns: StartDns, upstream: FakeUpstream,
                                                     name: str) -> None:
    server = await start_dns([upstream.address])
    resp = await udp_query(server, name)
    assert a_records(resp) == [UPSTREAM_IP]
    assert upstream.udp_queries == [name.rstrip(".") + "."]


async def test_truncated_upstream_answer_is_retried_over_tcp(start_dns: StartDns, upstream: FakeUpstream) -> None:
    upstream.mode = "truncate"
    upstream.records = 60  # ~1 KB: more than 512 bytes
    server = await start_dns([upstream.address])
    # An EDNS client with a 4096-byte buffer gets the whole TCP answer over UDP.
    resp = await udp_query(server, "big.example.com", edns=4096)
    assert len(a_records(resp)) == 60
    assert upstream.tcp_queries == ["big.example.com."]
    # A plain 512-byte client gets TC and retries over TCP to flocid, as resolvers do.
    small = await udp_query(server, "big.example.com")
    assert small.flags & dns.flags.TC and small.answer == []
    full = await tcp_query(server, "big.example.com")
    assert len(a_records(full)) == 60


async def test_silent_upstream_gives_servfail_not_a_hang(start_dns: StartDns, upstream: FakeUpstream,
                                                         autojump_clock: trio.testing.MockClock) -> None:
    upstream.mode = "silent"
    server = await start_dns([upstream.address], per_upstream=1.5)
    start = trio.current_time()
    resp = await udp_query(server, "slow.example.com")
    assert resp.rcode() == dns.rcode.SERVFAIL
    assert upstream.udp_queries == ["slow.example.com."]
    assert 1.5 <= trio.current_time() - start < 5


async def test_next_upstream_answers_when_the_first_is_silent(start_dns: StartDns, nursery: trio.Nursery,
                                                              autojump_clock: trio.testing.MockClock) -> None:
    silent, good = FakeUpstream(mode="silent"), FakeUpstream()
    await nursery.start(silent.serve)
    await nursery.start(good.serve)
    server = await start_dns([silent.address, good.address])
    resp = await udp_query(server, "example.org")
    assert a_records(resp) == [UPSTREAM_IP]
    assert silent.udp_queries == ["example.org."] and good.udp_queries == ["example.org."]


async def test_unreachable_or_missing_upstreams_give_servfail(start_dns: StartDns) -> None:
    # A loopback port with nobody behind it: the kernel refuses at once (ICMP port unreachable).
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as probe:
        await probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()
    with trio.fail_after(10):
        server = await start_dns([dead])
        assert (await udp_query(server, "example.net")).rcode() == dns.rcode.SERVFAIL
        nobody = await start_dns([])
        assert (await udp_query(nobody, "example.net")).rcode() == dns.rcode.SERVFAIL


async def test_garbage_is_ignored_and_the_server_keeps_serving(start_dns: StartDns, upstream: FakeUpstream) -> None:
    server = await start_dns([upstream.address])
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.sendto(b"\x00\x01garbage", server)
    assert a_records(await udp_query(server, "localhost.floci.io")) == [ANSWER_IP]


# ---- the decisions -------------------------------------------------------------------------------

def test_parse_resolv_conf() -> None:
    text = """
    # generated
    nameserver 192.0.2.53
    nameserver 127.0.0.11   # docker
    nameserver fe80::1%eth0
    nameserver not-an-ip
    search example.com
    options ndots:0
    nameserver 192.0.2.53
    """
    assert parse_resolv_conf(text) == [("192.0.2.53", 53), ("127.0.0.11", 53), ("fe80::1", 53)]
    assert parse_resolv_conf(text, exclude=[("127.0.0.11", 53)]) == [("192.0.2.53", 53), ("fe80::1", 53)]


def test_is_local_is_a_suffix_match_on_labels() -> None:
    suffixes = ("localhost.floci.io",)
    assert is_local("localhost.floci.io.", suffixes)
    assert is_local("x.LOCALHOST.floci.io", suffixes)
    assert not is_local("xlocalhost.floci.io", suffixes)
    assert not is_local("floci.io", suffixes)


def test_ipv6_answer_address_answers_aaaa() -> None:
    q = dns.message.make_query("localhost.floci.io", "AAAA")
    resp = local_answer(q, ("localhost.floci.io",), "fd00::1")
    assert resp is not None and [r.address for r in resp.answer[0]] == ["fd00::1"]
    q4 = dns.message.make_query("localhost.floci.io", "A")
    resp4 = local_answer(q4, ("localhost.floci.io",), "fd00::1")
    assert resp4 is not None and resp4.answer == []


def test_fit_for_udp_truncates_only_what_does_not_fit() -> None:
    q = dns.message.make_query("example.com", "A")
    resp = dns.message.make_response(q)
    resp.answer.append(dns.rrset.from_text_list("example.com.", 30, "IN", "A",
                                                [f"10.0.0.{i}" for i in range(1, 60)]))
    wire = resp.to_wire()
    assert len(wire) > 512
    cut = dns.message.from_wire(fit_for_udp(q, wire))
    assert cut.flags & dns.flags.TC and cut.answer == [] and cut.id == q.id
    q_edns = dns.message.make_query("example.com", "A", use_edns=0, payload=4096)
    assert fit_for_udp(q_edns, wire) == wire
