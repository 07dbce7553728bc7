"""The Runtime API invocation protocol, sans-IO: routing and the per-environment state machine.

One ``RuntimeProtocol`` per execution environment. It knows which invocation is waiting to be handed
to the runtime, which one the runtime is running, and how each one ended; it never touches a socket,
a clock or trio. The trio shell (``flocid.runtime_api.server``) feeds it HTTP requests and runtime
exits and wakes whoever waits when an ``Invocation`` completes (``Invocation.on_complete``).

Phases of the environment (AWS RAPID's runtime states, simplified)::

    INITIALIZING --first /next--> READY --hand-off--> INVOKING --/response|/error--> READY
         |                                                |
         +--/init/error--> FAILED                         +--exit / stop--> CLOSED (from any phase)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable

import attrs

from flocid.http11 import parse_request_head

#: AWS caps a synchronous response at 6 MiB + 100 bytes (peers.md 1.10 item 19).
MAX_RESPONSE_BYTES = 6_291_556

_PREFIX = "/2018-06-01/runtime/"
_INVOCATION_RE = re.compile(r"^/2018-06-01/runtime/invocation/([^/]+)/(response|error)$")


class RouteKind(enum.Enum):
    NEXT = "next"
    RESPONSE = "response"
    ERROR = "error"
    INIT_ERROR = "init_error"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"


@attrs.frozen
class Route:
    kind: RouteKind
    request_id: str | None = None


_NEXT = Route(RouteKind.NEXT)
_INIT_ERROR = Route(RouteKind.INIT_ERROR)
_NOT_FOUND = Route(RouteKind.NOT_FOUND)
_NOT_ALLOWED = Route(RouteKind.METHOD_NOT_ALLOWED)


def route(method: str, target: str) -> Route:
    """Map a request line to what it asks of the protocol."""
    path = target.split("?", 1)[0]
    if not path.startswith(_PREFIX):
        return _NOT_FOUND
    if path == "/2018-06-01/runtime/invocation/next":
        return _NEXT if method == "GET" else _NOT_ALLOWED
    if path == "/2018-06-01/runtime/init/error":
        return _INIT_ERROR if method == "POST" else _NOT_ALLOWED
    m = _INVOCATION_RE.match(path)
    if m is None:
        return _NOT_FOUND
    if method != "POST":
        return _NOT_ALLOWED
    kind = RouteKind.RESPONSE if m.group(2) == "response" else RouteKind.ERROR
    return Route(kind, m.group(1))


class Phase(enum.Enum):
    INITIALIZING = "initializing"
    READY = "ready"
    INVOKING = "invoking"
    FAILED = "failed"
    CLOSED = "closed"


class OutcomeKind(enum.Enum):
    #: The runtime posted ``/response``.
    RESPONSE = "response"
    #: The runtime posted ``/invocation/{id}/error``.
    ERROR = "error"
    #: The runtime posted ``/init/error`` (or had before this invocation was submitted).
    INIT_ERROR = "init_error"
    #: The response was larger than ``MAX_RESPONSE_BYTES``.
    TOO_LARGE = "too_large"
    #: The runtime process ended before answering.
    EXITED = "exited"
    #: The environment was stopped (drain, shutdown, timeout) before the runtime answered.
    STOPPED = "stopped"


@attrs.frozen
class Outcome:
    kind: OutcomeKind
    body: bytes = b""
    #: ``Lambda-Runtime-Function-Error-Type`` as posted, or the exit status for EXITED.
    error_type: str | None = None
    exit_status: int | None = None


def _noop() -> None:
    return None


@attrs.define(eq=False)
class Invocation:
    """One invocation as the Runtime API sees it. Mutable: the protocol fills in the outcome."""

    request_id: str
    payload: bytes
    function_arn: str
    timeout_ms: int
    trace_id: str
    client_context: str | None = None
    cognito_identity: str | None = None
    #: Wall-clock deadline sent to the runtime, set at hand-off (``Lambda-Runtime-Deadline-Ms``).
    deadline_ms: int = 0
    #: Set when the runtime took it from ``/next``.
    handed_off: bool = False
    outcome: Outcome | None = None
    #: Called exactly once when ``outcome`` is set (the shell wakes the waiting invoke).
    on_complete: Callable[[], None] = _noop
    #: Called when the invocation is handed to the runtime (the shell starts the timeout clock).
    on_handoff: Callable[[], None] = _noop

    def _complete(self, outcome: Outcome) -> bool:
        if self.outcome is not None:
            return False
        self.outcome = outcome
        self.on_complete()
        return True


@attrs.frozen
class Reply:
    """What to answer the runtime: status and a JSON body (ready to send in one write)."""

    status: int
    body: bytes


ACCEPTED = Reply(202, b'{"status":"OK"}')


def _error_reply(status: int, error_type: str, message: str) -> Reply:
    import json

    return Reply(status, json.dumps({"errorMessage": message, "errorType": error_type}).encode())


class ProtocolBusy(Exception):
    """An invocation was submitted while another one is pending or running."""


class RuntimeProtocol:
    """The state of one environment's Runtime API. Not thread-safe; one trio task at a time."""

    __slots__ = ("phase", "pending", "current", "init_error", "initialized")

    def __init__(self) -> None:
        self.phase = Phase.INITIALIZING
        #: Submitted, not yet handed to the runtime.
        self.pending: Invocation | None = None
        #: Handed to the runtime, not yet answered.
        self.current: Invocation | None = None
        #: The body of ``/init/error`` once posted.
        self.init_error: Outcome | None = None
        #: True once the runtime asked for its first invocation (init finished).
        self.initialized = False

    @property
    def busy(self) -> bool:
        return self.pending is not None or self.current is not None

    # -- the invoke side -------------------------------------------------------------------------

    def submit(self, inv: Invocation) -> bool:
        """Queue ``inv`` for the runtime. Return True when it completed at once (environment failed)."""
        if self.init_error is not None:
            inv._complete(self.init_error)
            return True
        if self.phase is Phase.CLOSED:
            inv._complete(Outcome(OutcomeKind.STOPPED))
            return True
        if self.busy:
            raise ProtocolBusy(inv.request_id)
        self.pending = inv
        return False

    def abandon(self, inv: Invocation) -> None:
        """The invoke gave up on ``inv`` (timeout, cancellation): forget it."""
        if self.pending is inv:
            self.pending = None
        if self.current is inv:
            self.current = None
        if self.phase is Phase.INVOKING and self.current is None:
            self.phase = Phase.READY

    # -- the runtime side ------------------------------------------------------------------------

    def next_invocation(self, now_ms: int) -> Invocation | None:
        """The runtime asks ``/next``. Return the invocation to hand over, or None to park."""
        self.initialized = True
        if self.phase is Phase.INITIALIZING:
            self.phase = Phase.READY
        if self.current is not None:
            # The runtime came back without answering: AWS treats the invocation as failed
            # and the runtime as broken. We answer the invoke now and hand over the next one.
            self.current._complete(
                Outcome(OutcomeKind.ERROR, b'{"errorMessage":"Runtime asked for the next invocation '
                        b'without answering the current one","errorType":"Runtime.InvalidStateTransition"}')
            )
            self.current = None
            self.phase = Phase.READY
        inv = self.pending
        if inv is None or self.phase is not Phase.READY:
            return None
        self.pending = None
        self.current = inv
        self.phase = Phase.INVOKING
        inv.deadline_ms = now_ms + inv.timeout_ms
        inv.handed_off = True
        inv.on_handoff()
        return inv

    def response(self, request_id: str, body: bytes, too_large: bool = False) -> Reply:
        inv = self._current(request_id)
        if inv is None:
            return _error_reply(400, "InvalidRequestID", "Invalid request ID")
        self.current = None
        self.phase = Phase.READY
        if too_large:
            inv._complete(Outcome(OutcomeKind.TOO_LARGE))
        else:
            inv._complete(Outcome(OutcomeKind.RESPONSE, body))
        return ACCEPTED

    def error(self, request_id: str, body: bytes, error_type: str | None) -> Reply:
        inv = self._current(request_id)
        if inv is None:
            return _error_reply(400, "InvalidRequestID", "Invalid request ID")
        self.current = None
        self.phase = Phase.READY
        inv._complete(Outcome(OutcomeKind.ERROR, body, error_type))
        return ACCEPTED

    def init_failed(self, body: bytes, error_type: str | None) -> Reply:
        """``/init/error``: the environment is unusable; the waiting invocation gets this error."""
        if self.phase is not Phase.INITIALIZING:
            return _error_reply(
                403, "InvalidStateTransition", "State transition from Ready to InitError failed for runtime"
            )
        self.init_error = Outcome(OutcomeKind.INIT_ERROR, body, error_type)
        self.phase = Phase.FAILED
        for inv in (self.pending, self.current):
            if inv is not None:
                inv._complete(self.init_error)
        self.pending = self.current = None
        return ACCEPTED

    def exited(self, status: int) -> None:
        """The runtime process ended: fail what is pending or running (init error wins if posted)."""
        self._close(Outcome(OutcomeKind.EXITED, exit_status=status))

    def stopped(self) -> None:
        """The environment is being torn down."""
        self._close(Outcome(OutcomeKind.STOPPED))

    def _close(self, outcome: Outcome) -> None:
        if self.init_error is not None:
            outcome = self.init_error
        for inv in (self.pending, self.current):
            if inv is not None:
                inv._complete(outcome)
        self.pending = self.current = None
        self.phase = Phase.CLOSED

    def _current(self, request_id: str) -> Invocation | None:
        inv = self.current
        if inv is None or inv.request_id != request_id:
            return None
        return inv


# -- HTTP/1.1 request heads (the hot path's parser) -----------------------------------------------


@attrs.frozen
class RequestHead:
    """A parsed request head. ``headers`` maps lower-case names to the last value."""

    method: str
    target: str
    headers: dict[str, str]
    content_length: int
    keep_alive: bool
    expect_continue: bool


def parse_head(head: bytes) -> RequestHead | None:
    """Parse a request head (without the blank line) the fast path understands, with
    ``flocid.http11``'s parser (the API port's too).

    Returns None for anything it does not handle (HTTP/1.0, ``Transfer-Encoding``, a malformed or
    ambiguous ``Content-Length``, obs-fold...): the caller hands the connection to h11 then, which
    handles or rejects it properly. Runtime clients send plain ``Content-Length`` requests.
    """
    parsed = parse_request_head(head)
    if parsed is None:
        return None
    target = parsed.path + b"?" + parsed.query if parsed.query else parsed.path
    return RequestHead(
        method=parsed.method,
        target=target.decode("latin-1"),
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in parsed.headers},
        content_length=parsed.content_length,
        keep_alive=parsed.keep_alive,
        expect_continue=parsed.expect_continue,
    )


_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error"}


def render_response(status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool = False) -> bytes:
    """One complete HTTP/1.1 response (head and body), to be written with a single send."""
    out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
    for name, value in headers:
        out.append(f"{name}: {value}\r\n")
    out.append(f"Content-Length: {len(body)}\r\n")
    if close:
        out.append("Connection: close\r\n")
    out.append("\r\n")
    # UTF-8, not latin-1: a client context may carry any character; runtimes read the raw bytes.
    return "".join(out).encode("utf-8") + body
