"""Function logs into the embedded CloudWatch Logs, as Lambda writes them.

Group ``/aws/lambda/<function>`` (or the function's LoggingConfig.LogGroup), one stream per
execution environment named ``yyyy/mm/dd/[version]<id>``, holding START, the function's output,
END and REPORT. ``aws logs tail /aws/lambda/f --follow`` shows them.

The invoke layer calls ``FunctionLogs.__call__`` on the trio thread for every line; it never
blocks: lines go into a bounded channel, and ``serve`` writes them in batches through the
services' moto thread. A full channel drops lines (counted, and said once in the log) rather than
slowing invocations down.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import attrs
import trio

from flocid.lambda_.models import FunctionConfig

log = logging.getLogger("flocid.logs")

QUEUE_LINES = 100_000
BATCH_LINES = 5_000
LINGER_SECONDS = 0.05
#: CloudWatch Logs' own cap on one event's message (bytes); longer lines are split.
MAX_MESSAGE = 256 * 1024 - 26


@attrs.frozen
class LogLine:
    account: str
    region: str
    group: str
    stream: str
    timestamp_ms: int
    message: str


class FunctionLogs:
    def __init__(self, services: Any) -> None:
        self._services = services
        self._send, self._receive = trio.open_memory_channel[LogLine](QUEUE_LINES)
        self.dropped = 0
        self.written = 0
        self._queued = 0
        self._stored = trio.lowlevel.ParkingLot()

    def __call__(self, fn: FunctionConfig, stream: str, line: bytes) -> None:
        if not stream:
            return
        text = line.decode("utf-8", "replace")
        now = int(time.time() * 1000)
        for start in range(0, max(len(text), 1), MAX_MESSAGE):
            item = LogLine(fn.account, fn.region, fn.log_group, stream, now, text[start : start + MAX_MESSAGE])
            try:
                self._send.send_nowait(item)
                self._queued += 1
            except trio.WouldBlock:
                if not self.dropped:
                    log.warning("function logs are arriving faster than they can be stored; dropping lines")
                self.dropped += 1

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for first in self._receive:
            batch = [first]
            # Linger a moment so one trip to the moto thread carries many invocations' lines.
            with trio.move_on_after(LINGER_SECONDS):
                while len(batch) < BATCH_LINES:
                    batch.append(await self._receive.receive())
            try:
                await self._services._run(_write, batch)
            except Exception:
                log.exception("could not store %d function log lines", len(batch))
            self.written += len(batch)
            self._stored.unpark_all()

    async def flush(self) -> None:
        """Wait until every line queued so far has been handled (stored, or failed and logged)."""
        target = self._queued
        while self.written < target:
            await self._stored.park()


def _write(batch: list[LogLine]) -> None:
    """In the moto thread: create groups and streams as needed, put the events in order."""
    from moto.logs.models import logs_backends

    streams: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for line in batch:
        streams[(line.account, line.region, line.group, line.stream)].append(
            {"timestamp": line.timestamp_ms, "message": line.message})
    for (account, region, group, stream), events in streams.items():
        backend = logs_backends[account][region]
        if group not in backend.groups:
            backend.create_log_group(group, {})
        if stream not in backend.groups[group].streams:
            backend.create_log_stream(group, stream)
        backend.put_log_events(group, stream, events)
