"""The embedded DNS responder: flocid's own names resolve to flocid, everything else is forwarded.

Containers flocid starts use it as their resolver, so code inside a function can reach flocid by
name, virtual-hosted S3 included (``my-bucket.localhost.floci.io:4566``). Floci does the same
(floci-lambda.md section 7).

    answered here   A for ``localhost.floci.io`` and every name under it, ``settings.hostname`` (and
                    names under it), every extra suffix (``FLOCI_DNS_EXTRA_SUFFIXES``) -> ``answer_ip``;
                    AAAA and other types for those names -> NOERROR, no records (authoritative)
    forwarded       every other query, to the upstream resolvers (``/etc/resolv.conf`` by default):
                    UDP first with a timeout per upstream, a truncated answer is retried over TCP,
                    the first answer is relayed verbatim; no upstream answers -> SERVFAIL

It listens on UDP and on TCP at the same address (a client that receives a truncated answer retries
over TCP). The decisions are plain functions (``local_answer``, ``fit_for_udp``, ``servfail``); the
trio shell moves datagrams and streams. Imports: dnspython, trio, config; nothing else of flocid.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trio

from flocid.config import Settings

log = logging.getLogger("flocid.dns")

BUILTIN_SUFFIXES = ("localhost.floci.io",)
#: TTL of the answers for flocid's own names (Floci uses 60 s).
LOCAL_TTL = 60
#: How long one upstream gets to answer (Floci uses 1.5 s).
UPSTREAM_TIMEOUT = 1.5
#: Queries handled at once; beyond it a query gets SERVFAIL at once instead of queueing.
MAX_IN_FLIGHT = 256
MAX_UDP = 65535

Address = tuple[str, int]


# ---- decisions (no I/O) -------------------------------------------------------------------------


def local_suffixes(settings: Settings, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The names flocid answers for itself, lower-case, without the trailing dot."""
    names = [*BUILTIN_SUFFIXES]
    if settings.hostname:
        names.append(settings.hostname)
    names.extend(getattr(settings, "dns_extra_suffixes", ()) or ())
    names.extend(extra)
    out: list[str] = []
    for n in names:
        n = n.strip().strip(".").lower()
        if n and n not in out:
            out.append(n)
    return tuple(out)


def is_local(qname: str, suffixes: Sequence[str]) -> bool:
    name = qname.strip(".").lower()
    return any(name == s or name.endswith("." + s) for s in suffixes)


def parse_resolv_conf(text: str, *, exclude: Iterable[Address] = ()) -> list[Address]:
    """The ``nameserver`` entries of a resolv.conf, as (ip, 53), without the excluded addresses."""
    skip = set(exclude)
    out: list[Address] = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            ip = parts[1].split("%", 1)[0]
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                continue
            addr = (ip, 53)
            if addr not in skip and addr not in out:
                out.append(addr)
    return out


def system_upstreams(path: Path = Path("/etc/resolv.conf"), *, exclude: Iterable[Address] = ()) -> list[Address]:
    try:
        return parse_resolv_conf(path.read_text(), exclude=exclude)
    except OSError as exc:
        log.warning("cannot read %s (%s): non-local names will get SERVFAIL", path, exc)
        return []


def local_answer(query: dns.message.Message, suffixes: Sequence[str], answer_ip: str) -> dns.message.Message | None:
    """The answer to ``query`` when it asks about one of flocid's names, else None (forward it)."""
    if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
        return None
    q = query.question[0]
    if q.rdclass != dns.rdataclass.IN or not is_local(q.name.to_text(), suffixes):
        return None
    resp = dns.message.make_response(query)
    resp.flags |= dns.flags.AA
    want = dns.rdatatype.AAAA if ipaddress.ip_address(answer_ip).version == 6 else dns.rdatatype.A
    if q.rdtype in (want, dns.rdatatype.ANY):
        resp.answer.append(dns.rrset.from_text(q.name, LOCAL_TTL, dns.rdataclass.IN, want, answer_ip))
    # Any other type (AAAA when the answer is IPv4, MX, TXT...): the name exists, no records.
    return resp


def servfail(query: dns.message.Message) -> bytes:
    resp = dns.message.make_response(query)
    resp.set_rcode(dns.rcode.SERVFAIL)
    return resp.to_wire()


def udp_limit(query: dns.message.Message) -> int:
    """The largest UDP answer the client accepts (EDNS0 payload size, else 512)."""
    return max(512, query.payload) if query.edns >= 0 else 512


def fit_for_udp(query: dns.message.Message, wire: bytes) -> bytes:
    """``wire`` if it fits the client's UDP limit, else an empty answer with TC set (retry on TCP)."""
    if len(wire) <= udp_limit(query):
        return wire
    try:
        resp = dns.message.from_wire(wire)
        header_only = dns.message.make_response(query)
        header_only.set_rcode(resp.rcode())
    except dns.exception.DNSException:
        header_only = dns.message.make_response(query)
    header_only.flags |= dns.flags.TC
    return header_only.to_wire()


def _is_truncated(wire: bytes) -> bool:
    return len(wire) >= 4 and bool(struct.unpack("!H", wire[2:4])[0] & dns.flags.TC)


def _same_id(query_wire: bytes, wire: bytes) -> bool:
    return len(wire) >= 12 and wire[:2] == query_wire[:2] and bool(wire[2] & 0x80)


# ---- forwarding ---------------------------------------------------------------------------------


async def _udp_exchange(wire: bytes, upstream: Address, per_upstream: float) -> bytes | None:
    family = trio.socket.AF_INET6 if ":" in upstream[0] else trio.socket.AF_INET
    with trio.socket.socket(family, trio.socket.SOCK_DGRAM) as sock, trio.move_on_after(per_upstream):
        await sock.connect(upstream)
        await sock.send(wire)
        while True:
            try:
                data = await sock.recv(MAX_UDP)
            except OSError as exc:  # ICMP port unreachable and the like
                log.debug("upstream %s:%d: %s", *upstream, exc)
                return None
            if _same_id(wire, data):
                return data
    return None


async def _tcp_exchange(wire: bytes, upstream: Address, per_upstream: float) -> bytes | None:
    with trio.move_on_after(per_upstream):
        try:
            stream = await trio.open_tcp_stream(*upstream)
        except OSError as exc:
            log.debug("upstream %s:%d over TCP: %s", *upstream, exc)
            return None
        async with stream:
            try:
                await stream.send_all(struct.pack("!H", len(wire)) + wire)
                data = await _read_tcp_message(stream)
            except (OSError, trio.BrokenResourceError) as exc:
                log.debug("upstream %s:%d over TCP: %s", *upstream, exc)
                return None
            if data is not None and _same_id(wire, data):
                return data
    return None


async def forward(wire: bytes, upstreams: Sequence[Address], *, per_upstream: float = UPSTREAM_TIMEOUT) -> bytes | None:
    """Ask each upstream in turn: UDP, then TCP when the UDP answer is truncated. None: no answer."""
    for upstream in upstreams:
        answer = await _udp_exchange(wire, upstream, per_upstream)
        if answer is not None and _is_truncated(answer):
            full = await _tcp_exchange(wire, upstream, per_upstream)
            if full is not None:
                return full
        if answer is not None:
            return answer
    return None


# ---- the server ---------------------------------------------------------------------------------


class _Responder:
    def __init__(self, suffixes: Sequence[str], answer_ip: str, upstreams: Sequence[Address],
                 per_upstream: float) -> None:
        self.suffixes = tuple(suffixes)
        self.answer_ip = answer_ip
        self.upstreams = list(upstreams)
        self.per_upstream = per_upstream
        self.limiter = trio.CapacityLimiter(MAX_IN_FLIGHT)

    async def answer(self, wire: bytes, *, udp: bool) -> bytes | None:
        """The reply to one query message (None: drop it, it is not a DNS query)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException as exc:
            log.debug("dropping an unparseable query: %s", exc)
            return None
        if query.flags & dns.flags.QR:
            return None
        local = local_answer(query, self.suffixes, self.answer_ip)
        if local is not None:
            out = local.to_wire()
        else:
            try:
                self.limiter.acquire_nowait()
            except trio.WouldBlock:
                return servfail(query)
            try:
                upstream = await forward(wire, self.upstreams, per_upstream=self.per_upstream)
            finally:
                self.limiter.release()
            out = upstream if upstream is not None else servfail(query)
        return fit_for_udp(query, out) if udp else out

    async def reply_udp(self, sock: trio.socket.SocketType, wire: bytes, peer: Address) -> None:
        out = await self.answer(wire, udp=True)
        if out is not None:
            try:
                await sock.sendto(out, peer)
            except OSError as exc:
                log.debug("cannot answer %s: %s", peer, exc)

    async def serve_tcp_client(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                while True:
                    with trio.move_on_after(self.per_upstream * (len(self.upstreams) + 2)) as idle:
                        wire = await _read_tcp_message(stream)
                    if idle.cancelled_caught or wire is None:
                        return
                    out = await self.answer(wire, udp=False)
                    if out is None:
                        return
                    await stream.send_all(struct.pack("!H", len(out)) + out)
            except (OSError, trio.BrokenResourceError):
                return


async def _read_tcp_message(stream: trio.abc.ReceiveStream) -> bytes | None:
    buf = b""
    while len(buf) < 2:
        chunk = await stream.receive_some(2 - len(buf))
        if not chunk:
            return None
        buf += chunk
    (size,) = struct.unpack("!H", buf)
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


async def bind_udp_tcp(host: str, port: int) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A UDP and a listening TCP socket on the same ``host:port``; with ``port=0``, a port free for
    both (a free UDP port may be taken for TCP: try again)."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    for attempt in range(50):
        udp = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        tcp = trio.socket.socket(family, trio.socket.SOCK_STREAM)
        try:
            tcp.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            await udp.bind((host, port))
            await tcp.bind((host, int(udp.getsockname()[1])))
            tcp.listen(128)
        except OSError:
            udp.close()
            tcp.close()
            if port != 0 or attempt == 49:
                raise
            continue
        return udp, tcp
    raise AssertionError("unreachable")


async def serve_dns(
    settings: Settings,
    *,
    host: str,
    port: int,
    answer_ip: str,
    upstreams: Sequence[Address] | None = None,
    extra_suffixes: Sequence[str] = (),
    per_upstream: float = UPSTREAM_TIMEOUT,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve DNS on ``host:port`` (UDP and TCP) until cancelled.

    ``port=0`` picks a free port (the same for UDP and TCP); ``task_status.started`` gets the
    bound (host, port). ``upstreams`` defaults to the nameservers of ``/etc/resolv.conf`` (this
    responder's own address excluded). A port that cannot be bound raises ``OSError`` before
    ``started``."""
    udp, tcp = await bind_udp_tcp(host, port)
    with udp, tcp:
        bound = int(udp.getsockname()[1])
        if upstreams is None:
            upstreams = system_upstreams(exclude=[(host, bound)])
        responder = _Responder(local_suffixes(settings, extra_suffixes), answer_ip, upstreams, per_upstream)
        log.info("DNS responder on %s:%d (UDP+TCP) answering %s with %s; forwarding to %s", host, bound,
                 ", ".join(responder.suffixes), answer_ip,
                 ", ".join(f"{h}:{p}" for h, p in responder.upstreams) or "nobody (SERVFAIL)")
        listener = trio.SocketListener(tcp)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, responder.serve_tcp_client, [listener])
            task_status.started((host, bound))
            while True:
                try:
                    wire, peer = await udp.recvfrom(MAX_UDP)
                except ConnectionResetError:  # an ICMP error from an earlier reply
                    continue
                nursery.start_soon(responder.reply_udp, udp, wire, (peer[0], peer[1]))
