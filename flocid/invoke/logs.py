"""The log lines Lambda writes around an invocation, and the ``LogType: Tail`` result. Sans-IO.

AWS (peers.md 1.10 item 23): ``START RequestId: <id> Version: <v>``, the function's output,
``END RequestId: <id>``, ``REPORT RequestId: <id>\\tDuration: ... ms\\tBilled Duration: ... ms\\t
Memory Size: ... MB\\tMax Memory Used: ... MB\\t`` (+ ``Init Duration: ... ms\\t`` on a cold start).
``X-Amz-Log-Result`` is base64 of the last 4 KB.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable

TAIL_BYTES = 4096


def start_line(request_id: str, version: str) -> bytes:
    return f"START RequestId: {request_id} Version: {version}".encode()


def end_line(request_id: str) -> bytes:
    return f"END RequestId: {request_id}".encode()


def report_line(
    request_id: str,
    *,
    duration_ms: float,
    memory_size_mb: int,
    max_memory_used_mb: int | None,
    init_duration_ms: float | None = None,
) -> bytes:
    billed = max(1, math.ceil(duration_ms))
    used = max_memory_used_mb if max_memory_used_mb is not None else memory_size_mb
    text = (
        f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\tBilled Duration: {billed} ms\t"
        f"Memory Size: {memory_size_mb} MB\tMax Memory Used: {used} MB\t"
    )
    if init_duration_ms is not None:
        text += f"Init Duration: {init_duration_ms:.2f} ms\t"
    return text.encode()


def tail(lines: Iterable[bytes], limit: int = TAIL_BYTES) -> str:
    """base64 of the last ``limit`` bytes of the lines, newline-terminated."""
    blob = b"".join(line + b"\n" for line in lines)
    return base64.b64encode(blob[-limit:]).decode("ascii")
