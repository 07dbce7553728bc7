"""The invoke service end to end through the process executor and the real awslambdaric.

Each test writes real handlers to a temporary code directory and runs them as local processes.
No Docker; a cold start costs a Python start-up (~0.1 s), so tests keep environments few.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from flocid.config import Settings
from flocid.executors.base import EnvironmentSpec
from flocid.executors.process import ProcessEnvironment, ProcessExecutor
from flocid.invoke.service import InvokeResult, InvokeService
from flocid.lambda_.errors import RequestTooLarge, TooManyRequests
from flocid.lambda_.models import FunctionConfig

pytest.importorskip("awslambdaric", reason="awslambdaric is needed to run real handlers")

ROLE = "arn:aws:iam::000000000000:role/r"

APP = """
import json, os, sys, time
COUNT = 0
print("init says hi")

def handler(event, context):
    global COUNT
    COUNT += 1
    mode = event.get("mode") if isinstance(event, dict) else None
    print("handling", COUNT)
    if mode == "error":
        raise ValueError("boom")
    if mode == "sleep":
        time.sleep(event["seconds"])
    if mode == "exit":
        sys.stdout.flush()
        os._exit(event["code"])
    if mode == "big":
        return "x" * event["n"]
    if mode == "env":
        return {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "LAMBDA_", "_HANDLER", "TZ", "MY_"))}
    if mode == "ctx":
        return {"arn": context.invoked_function_arn, "rid": context.aws_request_id,
                "remaining": context.get_remaining_time_in_millis(), "cc": context.client_context.custom
                if context.client_context else None}
    if mode == "none":
        return None
    return {"count": COUNT, "event": event, "pid": os.getpid()}
"""

BROKEN = """
raise RuntimeError("module level failure")
def handler(event, context):
    return 1
"""


@attrs.define
class Harness:
    tmp: Path
    reserved: dict[str, int] = attrs.field(factory=dict)
    outputs: list[bytes] = attrs.field(factory=list)

    def code(self, code_id: str, source: str, module: str = "app") -> str:
        d = self.tmp / "code" / code_id
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{module}.py").write_text(textwrap.dedent(source))
        return code_id

    def fn(self, name: str = "f", code_id: str = "app", **kw: Any) -> FunctionConfig:
        args: dict[str, Any] = dict(
            name=name, region="us-east-1", account="000000000000", role=ROLE, runtime="python3.11",
            handler="app.handler", code_id=code_id, revision_id="rev-1", timeout=3,
        )
        args.update(kw)
        return FunctionConfig(**args)

    def reserved_for(self, region: str, account: str, name: str) -> int | None:
        return self.reserved.get(name)

    def reserved_total(self, region: str, account: str) -> int:
        return sum(self.reserved.values())


Factory = Callable[..., Awaitable[InvokeService]]


@pytest.fixture
async def start(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Callable[..., Awaitable[tuple[InvokeService, Harness]]]]:
    scopes: list[trio.CancelScope] = []

    async def factory(**overrides: Any) -> tuple[InvokeService, Harness]:
        h = Harness(tmp_path)
        h.code("app", APP)
        base: dict[str, Any] = dict(
            data_dir=tmp_path / "data", runtime_api_base_port=0, runtime_api_max_port=0, port=4566,
        )
        base.update(overrides)
        svc = InvokeService(
            Settings(**base), ProcessExecutor(),
            code_dir_for=lambda cid: tmp_path / "code" / cid,
            reserved_for=h.reserved_for, reserved_total=h.reserved_total,
            log_sink=lambda fn, stream, line: h.outputs.append(line),
        )
        scope = trio.CancelScope()
        scopes.append(scope)

        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await svc.serve(task_status=task_status)

        await nursery.start(run)
        return svc, h

    yield factory
    for s in scopes:
        s.cancel()


def body(result: InvokeResult) -> Any:
    return json.loads(result.payload)


async def invoke(svc: InvokeService, fn: FunctionConfig, event: Any = None, **kw: Any) -> InvokeResult:
    with trio.fail_after(30):
        return await svc.invoke(fn, json.dumps(event if event is not None else {}).encode(), **kw)


async def test_success_and_warm_reuse(start: Any) -> None:
    svc, h = await start()
    fn = h.fn()
    first = await invoke(svc, fn, {"k": "v"})
    assert first.status == 200 and first.function_error is None
    assert first.executed_version == "$LATEST"
    assert body(first)["event"] == {"k": "v"} and body(first)["count"] == 1
    second = await invoke(svc, fn, {"k": 2})
    # Same environment: the module-level counter grew and the process is the same.
    assert body(second)["count"] == 2 and body(second)["pid"] == body(first)["pid"]
    stats = svc.statistics()
    assert stats.started == 1 and stats.reused == 1 and stats.warm == 1 and stats.busy == 0
    assert first.request_id != second.request_id
    none = await invoke(svc, fn, {"mode": "none"})
    assert none.payload == b"null"


async def test_handler_error_is_unhandled(start: Any) -> None:
    svc, h = await start()
    fn = h.fn()
    result = await invoke(svc, fn, {"mode": "error"})
    assert result.status == 200 and result.function_error == "Unhandled"
    doc = body(result)
    assert doc["errorType"] == "ValueError" and doc["errorMessage"] == "boom"
    assert doc["requestId"] == result.request_id
    assert isinstance(doc["stackTrace"], list)
    # The environment survives a handled error.
    again = await invoke(svc, fn)
    assert again.function_error is None and body(again)["count"] == 2


async def test_init_error(start: Any) -> None:
    svc, h = await start()
    h.code("broken", BROKEN)
    fn = h.fn("broken", code_id="broken")
    result = await invoke(svc, fn)
    assert result.status == 200 and result.function_error == "Unhandled"
    doc = body(result)
    assert doc["errorType"] == "RuntimeError"
    assert doc["errorMessage"] == "module level failure"
    assert doc["requestId"] == ""
    # Missing module: Runtime.ImportModuleError, and again on the next invoke (fresh environment).
    missing = await invoke(svc, h.fn("missing", handler="nothere.handler"))
    assert missing.function_error == "Unhandled"
    assert body(missing)["errorType"] == "Runtime.ImportModuleError"
    assert "Unable to import module 'nothere'" in body(missing)["errorMessage"]
    assert svc.statistics().warm == 0


async def test_timeout_destroys_environment(start: Any) -> None:
    svc, h = await start()
    fn = h.fn(timeout=1)
    warm = await invoke(svc, fn)
    t0 = trio.current_time()
    result = await invoke(svc, fn, {"mode": "sleep", "seconds": 30}, log_type="Tail")
    elapsed = trio.current_time() - t0
    assert result.log_result is not None
    assert f"{result.request_id} Task timed out after 1.00 seconds\n" in base64.b64decode(result.log_result).decode()
    assert 0.9 <= elapsed < 5
    assert result.function_error == "Unhandled"
    assert body(result) == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"RequestId: {result.request_id} Error: Task timed out after 1.00 seconds",
    }
    assert svc.statistics().timeouts == 1
    after = await invoke(svc, fn)
    assert after.function_error is None
    assert body(after)["count"] == 1 and body(after)["pid"] != body(warm)["pid"]  # cold again


@pytest.mark.parametrize(
    ("code", "reason"),
    [(0, "Runtime exited without providing a reason"), (3, "Runtime exited with error: exit status 3")],
)
async def test_runtime_exit_mid_invoke(start: Any, code: int, reason: str) -> None:
    svc, h = await start()
    fn = h.fn(timeout=20)
    t0 = trio.current_time()
    result = await invoke(svc, fn, {"mode": "exit", "code": code})
    assert trio.current_time() - t0 < 10  # at once, not after the timeout
    assert result.function_error == "Unhandled"
    assert body(result) == {
        "errorType": "Runtime.ExitError",
        "errorMessage": f"RequestId: {result.request_id} Error: {reason}",
    }
    after = await invoke(svc, fn)
    assert after.function_error is None and body(after)["count"] == 1


async def test_tail_log(start: Any) -> None:
    svc, h = await start()
    fn = h.fn(memory_size=256)
    cold = await invoke(svc, fn, log_type="Tail")
    assert cold.log_result is not None
    text = base64.b64decode(cold.log_result).decode()
    rid = cold.request_id
    assert text.startswith(f"START RequestId: {rid} Version: $LATEST\n") or f"\nSTART RequestId: {rid}" in text
    assert "handling 1\n" in text
    assert f"END RequestId: {rid}\n" in text
    report = text.rstrip("\n").split("\n")[-1]
    assert report.startswith(f"REPORT RequestId: {rid}\tDuration: ")
    assert "\tBilled Duration: " in report and "\tMemory Size: 256 MB\tMax Memory Used: " in report
    assert "\tInit Duration: " in report and report.endswith("\t")
    warm = await invoke(svc, fn, log_type="Tail")
    assert warm.log_result is not None
    wtext = base64.b64decode(warm.log_result).decode()
    assert "handling 2" in wtext and "Init Duration" not in wtext
    plain = await invoke(svc, fn)
    assert plain.log_result is None
    # Only the last 4 KB.
    h.code("chatty", 'def handler(e, c):\n    print("y" * 10000)\n    return 1\n')
    chatty = await invoke(svc, h.fn("chatty", code_id="chatty"), log_type="Tail")
    assert chatty.log_result is not None
    raw = base64.b64decode(chatty.log_result)
    assert len(raw) == 4096 and raw.rstrip(b"\n").split(b"\n")[-1].startswith(b"REPORT")
    # The log sink (CloudWatch Logs) got the output, and START/END/REPORT for every invocation.
    assert b"handling 1" in h.outputs
    with trio.fail_after(5):
        while sum(line.startswith(b"REPORT RequestId: ") for line in h.outputs) < 4:
            await trio.testing.wait_all_tasks_blocked(0.01)
    assert sum(line.startswith(b"START RequestId: ") for line in h.outputs) == 4
    assert sum(line.startswith(b"END RequestId: ") for line in h.outputs) == 4


async def test_environment_variables_and_context(start: Any) -> None:
    svc, h = await start()
    fn = h.fn(version="3", environment={"MY_VAR": "mine", "AWS_REGION": "overridden"}, memory_size=512, timeout=7)
    env = body(await invoke(svc, fn, {"mode": "env"}))
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "f"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "3"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert env["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "7"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/f"
    stream = env["AWS_LAMBDA_LOG_STREAM_NAME"]
    assert stream[:10].count("/") == 2 and "/[3]" in stream and len(stream.split("]")[1]) == 32
    assert env["_HANDLER"] == "app.handler"
    assert env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_REGION"] == "overridden"  # the function's own variables come last
    assert env["AWS_ACCESS_KEY_ID"] == "test" and env["AWS_SECRET_ACCESS_KEY"] == "test"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4566"
    assert env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:")
    assert env["TZ"] == ":UTC"
    assert env["MY_VAR"] == "mine"
    cc = base64.b64encode(json.dumps({"custom": {"a": "b"}}).encode()).decode()
    ctx = body(await invoke(svc, fn, {"mode": "ctx"}, client_context=cc))
    assert ctx["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:f:3"
    assert 0 < ctx["remaining"] <= 7000
    assert ctx["cc"] == {"a": "b"}


async def test_payload_limits(start: Any) -> None:
    svc, h = await start()
    fn = h.fn()
    with pytest.raises(RequestTooLarge) as info:
        await svc.invoke(fn, b"x" * (6_291_456 + 1))
    assert info.value.status == 413
    assert info.value.message == "Request must be smaller than 6291456 bytes for the InvokeFunction operation"
    with pytest.raises(RequestTooLarge):
        await svc.invoke(fn, b"x" * (1_048_576 + 1), invocation_type="Event")
    assert svc.statistics().started == 0  # nothing ran
    # Response limit: 6 MiB + 100 bytes passes, one more byte is Function.ResponseSizeTooLarge.
    ok = await invoke(svc, fn, {"mode": "big", "n": 6_291_556 - 2})
    assert ok.function_error is None and len(ok.payload) == 6_291_556
    big = await invoke(svc, fn, {"mode": "big", "n": 6_291_556 - 1})
    assert big.function_error == "Unhandled"
    assert body(big) == {
        "errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
    }
    # The environment stays usable.
    after = await invoke(svc, fn)
    assert body(after)["count"] == 3 and svc.statistics().started == 1


async def test_reserved_concurrency_429_under_parallel_load(start: Any) -> None:
    svc, h = await start()
    h.reserved["f"] = 1
    fn = h.fn()
    results: list[InvokeResult] = []
    errors: list[TooManyRequests] = []

    async def one() -> None:
        try:
            results.append(await invoke(svc, fn, {"mode": "sleep", "seconds": 0.3}))
        except TooManyRequests as exc:
            errors.append(exc)

    async with trio.open_nursery() as n:
        for _ in range(4):
            n.start_soon(one)
    assert len(results) == 1 and results[0].function_error is None
    assert len(errors) == 3
    assert {e.extra["Reason"] for e in errors} == {"ReservedFunctionConcurrentInvocationLimitExceeded"}
    # Sync invokes with reserved 0 are throttled.
    h.reserved["f"] = 0
    with pytest.raises(TooManyRequests):
        await svc.invoke(fn, b"{}")


async def test_region_pool_429(start: Any) -> None:
    svc, h = await start(region_concurrency_limit=3)
    h.reserved["other"] = 1  # pool for unreserved functions: 3 - 1 = 2
    fn = h.fn()
    ok = 0
    reasons: list[str] = []

    async def one() -> None:
        nonlocal ok
        try:
            await invoke(svc, fn, {"mode": "sleep", "seconds": 0.3})
            ok += 1
        except TooManyRequests as exc:
            reasons.append(str(exc.extra["Reason"]))

    async with trio.open_nursery() as n:
        for _ in range(3):
            n.start_soon(one)
    assert ok == 2 and reasons == ["ConcurrentInvocationLimitExceeded"]
    assert svc.statistics().started == 2  # two environments ran in parallel


async def test_event_and_dry_run(start: Any) -> None:
    svc, h = await start()
    h.code("marker", """
        import pathlib
        def handler(event, context):
            pathlib.Path(event["path"]).write_text("ran")
            return 1
    """)
    fn = h.fn("m", code_id="marker")
    dry = await svc.invoke(fn, b"{}", invocation_type="DryRun")
    assert dry.status == 204 and dry.payload == b""
    marker = h.tmp / "marker.txt"
    result = await svc.invoke(fn, json.dumps({"path": str(marker)}).encode(), invocation_type="Event")
    assert result.status == 202 and result.payload == b"" and result.function_error is None
    assert svc.statistics().events_pending == 1
    with trio.fail_after(20):
        await svc.wait_until(lambda st: st.events_pending == 0)
    assert marker.read_text() == "ran"
    assert svc.statistics().started == 1


async def test_event_waits_for_a_slot(start: Any) -> None:
    svc, h = await start()
    h.reserved["f"] = 1
    fn = h.fn()
    async with trio.open_nursery() as n:
        sync_done = trio.Event()

        async def sync_call() -> None:
            await invoke(svc, fn, {"mode": "sleep", "seconds": 0.3})
            sync_done.set()

        n.start_soon(sync_call)
        await trio.testing.wait_all_tasks_blocked()
        assert svc.statistics().in_flight == 1
        ev = await svc.invoke(fn, b"{}", invocation_type="Event")
        assert ev.status == 202  # accepted although the function is at its limit
        await sync_done.wait()
    with trio.fail_after(20):
        await svc.wait_until(lambda st: st.events_pending == 0)
    # Ran after the slot freed, on the same warm environment.
    assert svc.statistics().reused == 1 and svc.statistics().started == 1


async def test_drain_and_code_change(start: Any) -> None:
    svc, h = await start()
    fn = h.fn()
    first = body(await invoke(svc, fn))
    svc.drain("us-east-1", "000000000000", "f", "$LATEST")
    second = body(await invoke(svc, fn))
    assert second["pid"] != first["pid"] and second["count"] == 1
    # A new revision never reuses the old environments.
    changed = body(await invoke(svc, attrs.evolve(fn, revision_id="rev-2")))
    assert changed["pid"] != second["pid"]
    svc.drain("us-east-1", "000000000000", "f")
    with trio.fail_after(10):
        await svc.wait_until(lambda st: st.environments == 0)
    assert svc.statistics().warm == 0


async def test_ephemeral_mode(start: Any) -> None:
    svc, h = await start(ephemeral=True)
    fn = h.fn()
    a = body(await invoke(svc, fn))
    b = body(await invoke(svc, fn))
    assert a["pid"] != b["pid"] and a["count"] == b["count"] == 1
    assert svc.statistics().started == 2 and svc.statistics().warm == 0


async def test_dead_idle_environment_is_replaced(start: Any) -> None:
    svc, h = await start()
    fn = h.fn()
    first = body(await invoke(svc, fn))
    os.killpg(first["pid"], signal.SIGKILL)
    env = next(iter(svc._envs))
    with trio.fail_after(10):
        await env.handle.wait_exit()
        await svc.wait_until(lambda st: st.environments == 0)
    after = await invoke(svc, fn)
    assert after.function_error is None and body(after)["pid"] != first["pid"]


async def test_environment_dead_on_acquire_is_transparent(start: Any) -> None:
    """Killed while idle and invoked before its exit is noticed: the caller never sees it."""
    svc, h = await start()
    fn = h.fn()
    first = body(await invoke(svc, fn))
    pidfd = os.pidfd_open(first["pid"])
    try:
        os.killpg(first["pid"], signal.SIGKILL)
        with trio.fail_after(10):
            await trio.lowlevel.wait_readable(pidfd)  # the process is gone (not reaped)
    finally:
        os.close(pidfd)
    # The exit watcher has not necessarily run yet: the pool may still hold the dead environment.
    after = await invoke(svc, fn)
    assert after.function_error is None, after.payload
    assert body(after)["pid"] != first["pid"] and body(after)["count"] == 1


async def test_caller_cancelled_mid_invoke_and_mid_cold_start(start: Any) -> None:
    svc, h = await start()
    fn = h.fn(timeout=30)
    # Cancelled while the handler runs (the HTTP client went away): the environment cannot be
    # reused (its runtime is busy), so it is retired; the slot is freed.
    with trio.move_on_after(1.0) as scope:
        await svc.invoke(fn, json.dumps({"mode": "sleep", "seconds": 20}).encode())
    assert scope.cancelled_caught
    assert svc.statistics().in_flight == 0
    with trio.fail_after(10):
        await svc.wait_until(lambda st: st.environments == 0)
    # Cancelled during a cold start: nothing is left behind.
    with trio.move_on_after(0.001):
        await svc.invoke(fn, b"{}")
    with trio.fail_after(10):
        await svc.wait_until(lambda st: st.environments == 0)
    assert svc.statistics().in_flight == 0 and svc.statistics().ports_in_use == 0
    result = await invoke(svc, fn)
    assert result.function_error is None


async def test_shutdown_stops_every_environment(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.code("app", APP)
    svc = InvokeService(
        Settings(data_dir=tmp_path, runtime_api_base_port=0, runtime_api_max_port=0), ProcessExecutor(),
        code_dir_for=lambda cid: tmp_path / "code" / cid, reserved_for=h.reserved_for,
        reserved_total=h.reserved_total,
    )
    pids: list[int] = []
    async with trio.open_nursery() as n:
        await n.start(svc.serve)
        for name in ("a", "b"):
            pids.append(body(await invoke(svc, h.fn(name)))["pid"])
        n.cancel_scope.cancel()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_process_executor_rejects_what_it_cannot_run(tmp_path: Path) -> None:
    ex = ProcessExecutor()
    h = Harness(tmp_path)
    node = EnvironmentSpec(function=h.fn(runtime="nodejs20.x"), code_dir=tmp_path, runtime_api="x:1", env={})
    image = EnvironmentSpec(function=h.fn(package_type="Image", code_id=None), code_dir=None, runtime_api="x:1", env={})
    from flocid.executors.base import ExecutorError

    for spec in (node, image):
        with pytest.raises(ExecutorError):
            ex.command(spec)


async def test_provided_runtime_bootstrap(start: Any) -> None:
    """``provided.*`` runs the code's bootstrap: here a tiny shell+python runtime client."""
    svc, h = await start()
    d = h.tmp / "code" / "custom"
    d.mkdir(parents=True)
    boot = d / "bootstrap"
    boot.write_text(textwrap.dedent(f"""\
        #!{os.environ.get("PYTHON", __import__("sys").executable)}
        import http.client, os
        host = os.environ["AWS_LAMBDA_RUNTIME_API"]
        c = http.client.HTTPConnection(host)
        while True:
            c.request("GET", "/2018-06-01/runtime/invocation/next")
            r = c.getresponse()
            event = r.read()
            rid = r.getheader("Lambda-Runtime-Aws-Request-Id")
            c.request("POST", f"/2018-06-01/runtime/invocation/{{rid}}/response", b'{{"custom":' + event + b'}}')
            c.getresponse().read()
    """))
    boot.chmod(0o755)
    fn = h.fn("custom", code_id="custom", runtime="provided.al2023", handler="x")
    result = await invoke(svc, fn, {"z": 1})
    assert body(result) == {"custom": {"z": 1}}
    assert body(await invoke(svc, fn, {"z": 2})) == {"custom": {"z": 2}}


async def test_process_environment_memory_and_output(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    code = tmp_path / "code" / "app"
    code.mkdir(parents=True)
    boot = code / "bootstrap"
    boot.write_text("#!/bin/sh\necho one\necho two 1>&2\nexit 7\n")
    boot.chmod(0o755)
    env = await ProcessExecutor().start(
        EnvironmentSpec(function=h.fn(runtime="provided.al2023"), code_dir=code, runtime_api="127.0.0.1:1", env={})
    )
    assert isinstance(env, ProcessEnvironment)
    with trio.fail_after(10):
        status = await env.wait_exit()
        lines = [line async for line in env.output]
    assert status == 7
    assert sorted(lines) == [b"one", b"two"]
    await env.stop()  # idempotent after exit
