"""The invoke service: everything between "the API resolved a function version" and the result.

It owns the data plane: the concurrency limits, the warm pool, one child nursery per execution
environment (Runtime API server, exit watcher, output pump), the background Event invocations and
the idle reaper. The API layer calls ``invoke``, ``drain`` and ``statistics``; the daemon runs
``serve`` in its root nursery. Imports: executors, runtime_api, lambda_ (never api or state).

Behaviour reproduced (peers.md 1.10 items 15-23): 200/202/204 by invocation type; handler and init
errors as ``Unhandled`` with the runtime's error document; ``Sandbox.Timedout`` after the timeout
(environment destroyed); ``Runtime.ExitError`` when the runtime dies mid-invoke; payload limits;
``LogType: Tail``; reserved and region concurrency with immediate 429.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from flocid.config import Settings
from flocid.executors.base import EnvironmentSpec, Executor, ExecutorError, ExecutorUnavailable
from flocid.invoke import logs
from flocid.invoke.environment import WarmEnvironment, instance_labels, runtime_environment
from flocid.invoke.limits import ConcurrencyLimits, Slot
from flocid.invoke.pool import WarmPool
from flocid.lambda_.errors import RequestTooLarge, ServiceError, TooManyRequests
from flocid.lambda_.models import LATEST, FunctionConfig, function_arn
from flocid.runtime_api.protocol import MAX_RESPONSE_BYTES, Invocation, Outcome, OutcomeKind
from flocid.runtime_api.server import PortAllocator, RuntimeApiServer

log = logging.getLogger(__name__)

#: AWS's request limits (peers.md 1.10 item 20): 6 MiB synchronous, 1 MB asynchronous.
MAX_SYNC_REQUEST = 6_291_456
MAX_ASYNC_REQUEST = 1_048_576
#: AWS gives initialisation 10 s before it counts against the invoke (then the timeout applies).
INIT_LIMIT_SECONDS = 10.0
#: Bound on stopping one environment (shielded).
STOP_LIMIT_SECONDS = 10.0
#: LogType=Tail: how long to wait for the last output lines (quiet period for executors that
#: cannot tell when their output is drained, and the overall bound).
TAIL_QUIET = 0.03
TAIL_SETTLE_MAX = 0.5
#: AWS keeps retrying a throttled asynchronous event for up to 6 hours.
EVENT_MAX_AGE_SECONDS = 6 * 3600.0

RESPONSE_TOO_LARGE = json.dumps(
    {
        "errorMessage": f"Response payload size exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
    }
).encode()


@attrs.frozen
class InvokeResult:
    status: int
    payload: bytes
    function_error: str | None
    log_result: str | None
    executed_version: str
    request_id: str


@attrs.frozen
class InvokeStatistics:
    #: Idle environments in the pool.
    warm: int
    #: Environments running an invocation.
    busy: int
    #: Environments alive (warm + busy + starting/stopping).
    environments: int
    #: Cold starts and warm reuses since the service started.
    started: int
    reused: int
    invocations: int
    throttled: int
    timeouts: int
    #: Event invocations accepted and not finished.
    events_pending: int
    in_flight: int
    ports_in_use: int


def _trace_id() -> str:
    return f"Root=1-{int(time.time()):08x}-{os.urandom(12).hex()};Parent={os.urandom(8).hex()};Sampled=0"


def _client_context(raw: str | None) -> str | None:
    """The API gets ``X-Amz-Client-Context`` base64; the runtime gets the JSON itself."""
    if not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return raw


def _error_doc(error_type: str, message: str) -> bytes:
    # AWS puts errorType first for the sandbox errors (peers.md 1.10 items 17-18).
    return json.dumps({"errorType": error_type, "errorMessage": message}).encode()


def _exit_reason(status: int | None) -> str:
    if status is None or status == 0:
        return "Runtime exited without providing a reason"
    if status < 0:
        names = {9: "killed", 11: "segmentation fault", 6: "aborted", 15: "terminated"}
        return f"Runtime exited with error: signal: {names.get(-status, str(-status))}"
    return f"Runtime exited with error: exit status {status}"


class InvokeService:
    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        *,
        code_dir_for: Callable[[str], Path],
        reserved_for: Callable[[str, str, str], int | None],
        reserved_total: Callable[[str, str], int],
        log_sink: Callable[[FunctionConfig, str, bytes], None] | None = None,
    ) -> None:
        self._settings = settings
        self._executor = executor
        self._code_dir_for = code_dir_for
        self._reserved_for = reserved_for
        self._reserved_total = reserved_total
        #: Receives (function, log stream, line) for every line of the function's log: START, its
        #: output, END, REPORT (CloudWatch Logs). Called on the trio thread; must not block.
        self._log_sink = log_sink
        self._limits = ConcurrencyLimits(settings.region_concurrency_limit)
        self._pool: WarmPool[WarmEnvironment] = WarmPool(
            max_idle_per_function=max(4, os.cpu_count() or 1),
            idle_timeout=float(settings.container_idle_timeout_seconds),
            ephemeral=settings.ephemeral,
        )
        self._ports = PortAllocator(settings.runtime_api_base_port, settings.runtime_api_max_port)
        self._nursery: trio.Nursery | None = None
        self._envs: set[WarmEnvironment] = set()
        self._slot_freed = trio.lowlevel.ParkingLot()
        #: Woken when an environment ends or an Event invocation finishes (``wait_until``).
        self._changed = trio.lowlevel.ParkingLot()
        self._started = 0
        self._reused = 0
        self._invocations = 0
        self._timeouts = 0
        self._events_pending = 0

    # -- lifetime --------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the data plane until cancelled; on cancel every environment is stopped (shielded)."""
        try:
            reaped = await self._executor.reap_orphans()
        except ExecutorUnavailable as exc:
            # The daemon has already said, in one line, that the backend is unreachable.
            log.debug("could not look for orphaned environments: %s", exc)
            reaped = 0
        except ExecutorError as exc:
            # The backend may come later (Docker started after flocid): invokes report it then.
            log.warning("could not look for orphaned environments: %s", exc)
            reaped = 0
        if reaped:
            log.info("removed %d environments left by an earlier flocid", reaped)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._pool.serve_reaper, self._retire)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # -- the API ---------------------------------------------------------------------------------

    async def invoke(
        self,
        fn: FunctionConfig,
        payload: bytes,
        *,
        invocation_type: str = "RequestResponse",
        log_type: str | None = None,
        client_context: str | None = None,
    ) -> InvokeResult:
        request_id = str(uuid.uuid4())
        if invocation_type == "DryRun":
            return InvokeResult(204, b"", None, None, fn.version, request_id)
        if invocation_type == "Event":
            if len(payload) > MAX_ASYNC_REQUEST:
                # AWS's exact text for the 1 MB async limit is unrecorded; same shape as the sync one.
                raise RequestTooLarge(
                    f"Request must be smaller than {MAX_ASYNC_REQUEST} bytes for the InvokeFunction operation"
                )
            self._nursery_or_fail().start_soon(self._run_event, fn, payload, request_id)
            self._events_pending += 1
            return InvokeResult(202, b"", None, None, fn.version, request_id)
        if len(payload) > MAX_SYNC_REQUEST:
            raise RequestTooLarge(
                f"Request must be smaller than {MAX_SYNC_REQUEST} bytes for the InvokeFunction operation"
            )
        self._nursery_or_fail()
        slot = self._acquire_slot(fn)
        try:
            return await self._invoke(fn, payload, request_id, log_type == "Tail", client_context)
        finally:
            self._release_slot(slot)

    def drain(self, region: str, account: str, name: str, version: str | None = None) -> None:
        """Stop the idle environments of a function version (all versions when None).

        Busy ones finish their invocation and are stopped when they come back.
        """
        arns = None
        if version is not None:
            arns = [function_arn(region, account, name, None if version == LATEST else version)]
        for env in self._pool.drain(arns, (region, account, name)):
            env.retire()

    def statistics(self) -> InvokeStatistics:
        lim = self._limits.statistics()
        return InvokeStatistics(
            warm=self._pool.idle_count,
            busy=sum(1 for e in self._envs if e.busy),
            environments=len(self._envs),
            started=self._started,
            reused=self._reused,
            invocations=self._invocations,
            throttled=lim.throttled,
            timeouts=self._timeouts,
            events_pending=self._events_pending,
            in_flight=lim.in_flight,
            ports_in_use=self._ports.in_use,
        )

    async def wait_until(self, predicate: Callable[[InvokeStatistics], bool]) -> None:
        """Wait until ``predicate(statistics())`` holds; re-checked when an environment ends or an
        Event invocation finishes (for tests and orderly shutdowns; bound it with ``fail_after``)."""
        while not predicate(self.statistics()):
            await self._changed.park()

    # -- concurrency -----------------------------------------------------------------------------

    def _acquire_slot(self, fn: FunctionConfig) -> Slot:
        reserved = self._reserved_for(fn.region, fn.account, fn.name)
        total = self._reserved_total(fn.region, fn.account)
        return self._limits.acquire_nowait((fn.region, fn.account, fn.name), reserved, total)

    def _release_slot(self, slot: Slot) -> None:
        self._limits.release(slot)
        self._slot_freed.unpark_all()
        self._changed.unpark_all()

    async def _run_event(self, fn: FunctionConfig, payload: bytes, request_id: str) -> None:
        """An accepted Event invocation: wait for a slot (AWS retries throttled events), then run."""
        try:
            with trio.move_on_after(EVENT_MAX_AGE_SECONDS):
                while True:
                    try:
                        slot = self._acquire_slot(fn)
                        break
                    except TooManyRequests:
                        if self._reserved_for(fn.region, fn.account, fn.name) == 0:
                            # AWS sends these straight to the on-failure destination (ZeroReservedConcurrency).
                            log.warning("event %s for %s dropped: reserved concurrency is 0", request_id, fn.arn)
                            return
                    # Limits may also change without a release (PutFunctionConcurrency): re-check each second.
                    with trio.move_on_after(1.0):
                        await self._slot_freed.park()
                try:
                    result = await self._invoke(fn, payload, request_id, False, None)
                finally:
                    self._release_slot(slot)
                if result.function_error:
                    log.info("event %s for %s failed: %s", request_id, fn.arn, result.payload[:500])
                return
            log.warning("event %s for %s dropped: older than %d s", request_id, fn.arn, EVENT_MAX_AGE_SECONDS)
        except Exception:
            log.exception("event %s for %s failed", request_id, fn.arn)
        finally:
            self._events_pending -= 1
            self._changed.unpark_all()

    # -- one invocation --------------------------------------------------------------------------

    async def _invoke(
        self, fn: FunctionConfig, payload: bytes, request_id: str, tail: bool, client_context: str | None
    ) -> InvokeResult:
        self._invocations += 1
        while True:
            try:
                env, cold = await self._acquire_env(fn)
            except ExecutorUnavailable as exc:
                raise ServiceError(str(exc)) from exc
            except ExecutorError as exc:
                body = json.dumps(
                    {"errorMessage": f"Failed to start Lambda environment: {exc}", "errorType": "Lambda.InitError"}
                ).encode()
                return InvokeResult(200, body, "Unhandled", None, fn.version, request_id)
            result = await self._invoke_on(env, cold, fn, payload, request_id, tail, client_context)
            if result is not None:
                return result
            # A warm environment died before taking the invocation: it was dead when acquired
            # (its exit not yet noticed). Discard it and try the next one; a cold start always answers.

    async def _invoke_on(
        self,
        env: WarmEnvironment,
        cold: bool,
        fn: FunctionConfig,
        payload: bytes,
        request_id: str,
        tail: bool,
        client_context: str | None,
    ) -> InvokeResult | None:
        done = trio.Event()
        progress = trio.Event()
        handoff_at = [0.0]

        def on_handoff() -> None:
            handoff_at[0] = trio.current_time()
            progress.set()

        def on_complete() -> None:
            done.set()
            progress.set()

        inv = Invocation(
            request_id=request_id,
            payload=payload,
            function_arn=fn.arn,
            timeout_ms=fn.timeout * 1000,
            trace_id=_trace_id(),
            client_context=_client_context(client_context),
            on_complete=on_complete,
            on_handoff=on_handoff,
        )
        capture: list[bytes] | None = [] if tail else None
        env.capture = capture
        server = env.server
        reusable = False
        error: str | None
        sink = self._log_sink
        if sink is not None:
            sink(fn, env.log_stream, logs.start_line(request_id, fn.version))
        try:
            server.submit(inv)
            if not progress.is_set():
                # Cold start: the runtime initialises, then asks /next.
                with trio.move_on_after(INIT_LIMIT_SECONDS + fn.timeout):
                    await progress.wait()
            if inv.outcome is None and inv.handed_off:
                with trio.move_on_at(handoff_at[0] + fn.timeout):
                    await done.wait()
            ended_at = trio.current_time()
            if tail:
                # Before the capture closes: the last printed lines may still be in flight.
                await self._settle_output(env)
            outcome = inv.outcome
            if (
                outcome is not None
                and not cold
                and not inv.handed_off
                and outcome.kind in (OutcomeKind.EXITED, OutcomeKind.STOPPED)
            ):
                return None
            if outcome is None:
                self._timeouts += 1
                server.abandon(inv)
                status, error = 200, "Unhandled"
                body = _error_doc(
                    "Sandbox.Timedout", f"RequestId: {request_id} Error: Task timed out after {fn.timeout:.2f} seconds"
                )
                if capture is not None:
                    # The line AWS writes to the function's log on a timeout.
                    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
                    capture.append(f"{now} {request_id} Task timed out after {fn.timeout:.2f} seconds".encode())
            else:
                status, body, error, reusable = self._result_of(outcome, request_id, env)
                if fn.hot_reload_path:
                    reusable = False  # hot reload: a fresh environment sees the edited files
        finally:
            env.capture = None
            env.busy = False
            if not (reusable and env.alive):
                server.abandon(inv)
                env.retire()
        log_result = None
        if tail:
            log_result = await self._tail(env, fn, inv, cold, handoff_at[0], ended_at, capture or [])
        if sink is not None and self._nursery is not None:
            # END and REPORT (with the memory reading) off the response's path.
            self._nursery.start_soon(self._log_end, env, fn, inv, cold, handoff_at[0], ended_at)
        if reusable:
            for stale in self._pool.release(env):
                stale.retire()
        return InvokeResult(status, body, error, log_result, fn.version, request_id)

    def _result_of(
        self, outcome: Outcome, request_id: str, env: WarmEnvironment
    ) -> tuple[int, bytes, str | None, bool]:
        kind = outcome.kind
        if kind is OutcomeKind.RESPONSE:
            return 200, outcome.body, None, True
        if kind is OutcomeKind.ERROR:
            return 200, outcome.body, "Unhandled", True
        if kind is OutcomeKind.TOO_LARGE:
            # The environment stays usable (peers.md 1.10 item 19).
            return 200, RESPONSE_TOO_LARGE, "Unhandled", True
        if kind is OutcomeKind.INIT_ERROR:
            return 200, outcome.body, "Unhandled", False
        status = outcome.exit_status if kind is OutcomeKind.EXITED else env.exit_status
        if not env.server.next_requests:
            log.warning("environment %s of %s (Runtime API port %d) ended (status %s) before its runtime asked "
                        "/next: %d connection(s) reached its Runtime API", env.handle.id[:12], env.fn.arn,
                        env.port, status, env.server.connections)
        return 200, _error_doc("Runtime.ExitError", f"RequestId: {request_id} Error: {_exit_reason(status)}"), "Unhandled", False

    async def _log_end(self, env: WarmEnvironment, fn: FunctionConfig, inv: Invocation, cold: bool,
                       handoff_at: float, ended_at: float) -> None:
        sink = self._log_sink
        assert sink is not None
        report = await self._report(env, fn, inv, cold, handoff_at, ended_at)
        sink(fn, env.log_stream, logs.end_line(inv.request_id))
        sink(fn, env.log_stream, report)

    async def _report(self, env: WarmEnvironment, fn: FunctionConfig, inv: Invocation, cold: bool,
                      handoff_at: float, ended_at: float) -> bytes:
        duration = max(0.0, (ended_at - handoff_at) * 1000.0) if inv.handed_off else 0.0
        init = (handoff_at - env.started_at) * 1000.0 if cold and inv.handed_off else None
        peak = None
        try:
            with trio.move_on_after(1.0):
                peak = await env.handle.memory_peak_mb()
        except Exception:
            peak = None
        return logs.report_line(
            inv.request_id, duration_ms=duration, memory_size_mb=fn.memory_size,
            max_memory_used_mb=peak, init_duration_ms=init,
        )

    async def _tail(
        self,
        env: WarmEnvironment,
        fn: FunctionConfig,
        inv: Invocation,
        cold: bool,
        handoff_at: float,
        ended_at: float,
        lines: list[bytes],
    ) -> str:
        report = await self._report(env, fn, inv, cold, handoff_at, ended_at)
        return logs.tail(
            [logs.start_line(inv.request_id, fn.version), *lines, logs.end_line(inv.request_id), report]
        )

    async def _settle_output(self, env: WarmEnvironment) -> None:
        """Let the lines printed just before the response reach the capture (LogType=Tail only).

        The runtime prints, then posts; the post can arrive first. An executor that can tell when
        its pipe is drained offers ``settle_output`` (process); otherwise wait for a short quiet
        period on the output (docker's log stream), at most TAIL_SETTLE_MAX seconds.
        """
        handle = env.handle
        settle = getattr(handle, "settle_output", None)
        with trio.move_on_after(TAIL_SETTLE_MAX):
            if settle is not None:
                await settle()
                while env.lines_seen < getattr(handle, "lines_emitted", 0):
                    await trio.lowlevel.checkpoint()
                return
            while True:
                event = env.new_line = trio.Event()
                with trio.move_on_after(TAIL_QUIET) as quiet:
                    await event.wait()
                if quiet.cancelled_caught:
                    return

    # -- environments ----------------------------------------------------------------------------

    async def _acquire_env(self, fn: FunctionConfig) -> tuple[WarmEnvironment, bool]:
        key = (fn.arn, fn.revision_id)
        env, dead = self._pool.acquire_nowait(key)
        for d in dead:
            d.retire()
        if env is not None:
            self._reused += 1
            env.busy = True
            return env, False
        nursery = self._nursery_or_fail()
        created: list[WarmEnvironment] = []
        try:
            env = await nursery.start(self._run_environment, fn, created)
        except BaseException:
            # Cancelled while starting (client gone, shutdown): never leave a started one behind.
            for orphan in created:
                orphan.retire()
            raise
        self._started += 1
        env.busy = True
        return env, True

    async def _run_environment(
        self,
        fn: FunctionConfig,
        created: list[WarmEnvironment],
        *,
        task_status: trio.TaskStatus[WarmEnvironment] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One environment's whole life: port, executor start, its tasks; stop on exit or retire."""
        if fn.package_type != "Image" and fn.code_id is None and not fn.hot_reload_path:
            raise ExecutorError(f"function {fn.arn} has no deployed code")
        function = (fn.region, fn.account, fn.name)
        # The drain generation before anything is started: a drain during a slow start (image
        # pull) must retire this environment when it is released.
        epoch = self._pool.epoch(fn.arn, function)
        host = self._executor.bind_host
        port_reusable = True
        stopped = False
        try:
            listener, port = await self._ports.open_listener(host)
        except OSError as exc:
            raise ExecutorError(f"cannot listen for the Runtime API on {host}: {exc}") from exc
        try:
            try:
                server = RuntimeApiServer()
                advertise = self._executor.advertise_host
                spec = EnvironmentSpec(
                function=fn,
                    code_dir=(Path(fn.hot_reload_path) if fn.hot_reload_path
                              else self._code_dir_for(fn.code_id) if fn.code_id is not None else None),
                    bind_code=fn.hot_reload_path is not None,
                    runtime_api=f"{advertise}:{port}",
                    env=runtime_environment(
                        self._settings,
                        fn,
                        runtime_api=f"{advertise}:{port}",
                        endpoint_host=self._settings.hostname or advertise,
                        # A container sees the host's ~/.aws at its mount point; a process, where it is.
                        aws_config_dir=getattr(self._executor, "aws_config_dir", None)
                        or str(self._settings.aws_config_path),
                    ),
                    image=fn.image_uri if fn.package_type == "Image" else None,
                    labels=instance_labels(self._settings, fn),
                )
                started_at = trio.current_time()
                handle = await self._executor.start(spec)
            except BaseException:
                listener.socket.close()
                raise
            env = WarmEnvironment(
                fn=fn,
                key=(fn.arn, fn.revision_id),
                function=function,
                epoch=epoch,
                port=port,
                server=server,
                handle=handle,
                started_at=started_at,
                log_stream=spec.env.get("AWS_LAMBDA_LOG_STREAM_NAME", ""),
            )
            self._envs.add(env)
            created.append(env)
            try:
                with env.cancel_scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._guard, env, server.serve, listener)
                        nursery.start_soon(self._guard, env, self._watch_exit, env)
                        nursery.start_soon(self._guard, env, self._pump_output, env)
                        task_status.started(env)
            finally:
                env.alive = False
                self._pool.remove(env)
                server.stopped()
                with trio.CancelScope(shield=True), trio.move_on_after(STOP_LIMIT_SECONDS) as bound:
                    try:
                        await handle.stop()
                        stopped = True
                    except Exception:
                        log.exception("stopping environment %s of %s failed", handle.id, fn.arn)
                if bound.cancelled_caught or not stopped:
                    # Its runtime may still be alive and would reconnect to whatever listens on this
                    # port next, taking another environment's invocations: never hand it out again.
                    log.warning("environment %s of %s did not stop within %.0f s; its Runtime API port "
                                "%d is retired", handle.id, fn.arn, STOP_LIMIT_SECONDS, port)
                    port_reusable = False
                self._envs.discard(env)
                self._changed.unpark_all()
        finally:
            if port_reusable:
                self._ports.release(port)

    async def _guard(self, env: WarmEnvironment, fn: Callable[..., object], *args: object) -> None:
        """Run one of an environment's tasks; a failure retires the environment, never the service."""
        try:
            await fn(*args)  # type: ignore[misc]
        except Exception:
            log.exception("environment %s of %s failed", env.handle.id, env.fn.arn)
            env.retire()

    async def _watch_exit(self, env: WarmEnvironment) -> None:
        status = await env.handle.wait_exit()
        env.exit_status = status
        env.alive = False
        env.server.exited(status)
        env.retire()

    async def _pump_output(self, env: WarmEnvironment) -> None:
        sink = self._log_sink
        async for line in env.handle.output:
            env.lines_seen += 1
            capture = env.capture
            if capture is not None:
                capture.append(line)
                if env.new_line is not None:
                    env.new_line.set()
            if sink is not None:
                sink(env.fn, env.log_stream, line)

    async def _retire(self, env: WarmEnvironment) -> None:
        env.retire()

    def _nursery_or_fail(self) -> trio.Nursery:
        if self._nursery is None:
            raise ServiceError("The invoke service is not running.")
        return self._nursery


__all__ = ["InvokeResult", "InvokeService", "InvokeStatistics"]
