"""The request-head parser of flocid's two hand-written HTTP/1.1 loops: the API port's
(``flocid.front``) and each environment's Runtime API server (``flocid.runtime_api.server``).
Sans-IO. Anything it does not return a head for goes to h11, which handles or rejects it.
"""

from __future__ import annotations

import attrs

#: Control characters a head may not carry (but the CRLFs ending its lines); HTAB is allowed.
_CTL = bytes(c for c in range(32) if c != 9) + b"\x7f"


@attrs.frozen
class RequestHead:
    """Header names lower-cased, values stripped, repeated headers kept in order."""

    method: str
    path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    content_length: int
    keep_alive: bool
    expect_continue: bool


def parse_request_head(head: bytes) -> RequestHead | None:
    """A request head (without its blank line) a hand-written HTTP/1.1 loop may serve, or None to
    leave the connection to h11 (through hypercorn or directly): only HTTP/1.1 origin-form
    requests with at most one plain Content-Length, no Transfer-Encoding or Upgrade, no control
    characters but the CRLFs ending lines."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[0].isalpha() or not parts[1].startswith(b"/"):
        return None
    if len(head.translate(None, _CTL)) != len(head) - 2 * (len(lines) - 1):
        return None  # a bare CR or LF (h11 ends a line at a bare LF), NUL...: h11 judges it
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
            if length is not None or not value.isdigit() or len(value) > 18:
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
    # upper-cased as hypercorn did (RFC 9110 says case-sensitive; no client relies on that)
    return RequestHead(method=parts[0].decode("ascii").upper(), path=path, query=query, headers=headers,
                       content_length=length or 0, keep_alive=keep_alive, expect_continue=expect)
