"""The warm pool: bookkeeping with fake environments and trio's clock (LIFO, dead discard, max idle,
reaping, drain), then inside the service with an in-process fake runtime (200 environments, reaping)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from flocid.config import Settings
from flocid.executors.base import EnvironmentSpec
from flocid.invoke.pool import WarmPool
from flocid.invoke.service import InvokeService
from flocid.lambda_.models import FunctionConfig

ARN = "arn:aws:lambda:us-east-1:000000000000:function:f"
FN = ("us-east-1", "000000000000", "f")
KEY = (ARN, "rev1")
KEY_V1 = (ARN + ":1", "rev-v1")


@attrs.define(eq=False)
class FakeEnv:
    name: str
    key: tuple[str, str] = KEY
    function: tuple[str, str, str] = FN
    epoch: int = 0
    alive: bool = True


def pool(**kw: object) -> WarmPool[FakeEnv]:
    args: dict[str, object] = dict(max_idle_per_function=4, idle_timeout=300.0)
    args.update(kw)
    return WarmPool(**args)  # type: ignore[arg-type]


async def test_empty_pool_gives_nothing() -> None:
    p = pool()
    env, dead = p.acquire_nowait(KEY)
    assert env is None and dead == []


async def test_lifo_reuse() -> None:
    p = pool()
    a, b, c = FakeEnv("a"), FakeEnv("b"), FakeEnv("c")
    for e in (a, b, c):
        assert p.release(e) == []
    assert p.idle_count == 3
    assert p.acquire_nowait(KEY)[0] is c
    assert p.acquire_nowait(KEY)[0] is b
    assert p.release(c) == []
    assert p.acquire_nowait(KEY)[0] is c
    assert p.acquire_nowait(KEY)[0] is a
    assert p.acquire_nowait(KEY)[0] is None


async def test_versions_are_separate() -> None:
    p = pool()
    latest, v1 = FakeEnv("latest"), FakeEnv("v1", key=KEY_V1)
    p.release(latest)
    p.release(v1)
    assert p.acquire_nowait(KEY_V1)[0] is v1
    assert p.acquire_nowait(KEY_V1)[0] is None
    assert p.acquire_nowait((ARN, "rev2"))[0] is None  # a changed $LATEST never gets old environments
    assert p.acquire_nowait(KEY)[0] is latest


async def test_dead_environment_is_discarded_on_acquire() -> None:
    p = pool()
    good, dead = FakeEnv("good"), FakeEnv("dead")
    p.release(good)
    p.release(dead)
    dead.alive = False
    env, discarded = p.acquire_nowait(KEY)
    assert env is good
    assert discarded == [dead]
    assert p.idle_count == 0


async def test_max_idle_per_function_counts_all_versions() -> None:
    p = pool(max_idle_per_function=2)
    a, b, c = FakeEnv("a"), FakeEnv("b", key=KEY_V1), FakeEnv("c")
    assert p.release(a) == []
    assert p.release(b) == []
    assert p.release(c) == [c]  # excess is stopped
    assert p.idle_count == 2
    other = FakeEnv("other", function=("us-east-1", "000000000000", "g"), key=("g-arn", "r"))
    assert p.release(other) == []  # another function has its own budget


async def test_ephemeral_keeps_nothing() -> None:
    p = pool(ephemeral=True)
    e = FakeEnv("e")
    assert p.release(e) == [e]
    assert p.idle_count == 0


async def test_release_of_dead_env_stops_it() -> None:
    p = pool()
    e = FakeEnv("e", alive=False)
    assert p.release(e) == [e]


async def test_drain_version_stops_idle_and_marks_busy_stale() -> None:
    p = pool()
    idle_latest = FakeEnv("idle")
    busy_latest = FakeEnv("busy", epoch=p.epoch(ARN, FN))
    v1 = FakeEnv("v1", key=KEY_V1)
    p.release(idle_latest)
    p.release(v1)
    stopped = p.drain([ARN], FN)
    assert stopped == [idle_latest]
    assert p.acquire_nowait(KEY_V1)[0] is v1  # published versions untouched
    # The busy one comes back after the drain: stopped, not pooled.
    assert p.release(busy_latest) == [busy_latest]
    # A new environment (current epoch) is pooled again.
    fresh = FakeEnv("fresh", epoch=p.epoch(ARN, FN))
    assert p.release(fresh) == []


async def test_drain_all_versions() -> None:
    p = pool()
    a, v1 = FakeEnv("a"), FakeEnv("v1", key=KEY_V1)
    busy_v1 = FakeEnv("busy", key=KEY_V1, epoch=p.epoch(ARN + ":1", FN))
    p.release(a)
    p.release(v1)
    assert set(map(id, p.drain(None, FN))) == {id(a), id(v1)}
    assert p.idle_count == 0
    assert p.release(busy_v1) == [busy_v1]


async def test_remove_idle() -> None:
    p = pool()
    e = FakeEnv("e")
    p.release(e)
    assert p.remove(e) is True
    assert p.remove(e) is False
    assert p.acquire_nowait(KEY)[0] is None


async def test_reaper_retires_after_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    p = pool(idle_timeout=300.0)
    retired: list[tuple[str, float]] = []
    t0 = trio.current_time()

    async def retire(env: FakeEnv) -> None:
        retired.append((env.name, trio.current_time() - t0))

    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve_reaper, retire)
        a = FakeEnv("a")
        p.release(a)
        await trio.sleep(100)
        b = FakeEnv("b")
        p.release(b)
        await trio.sleep(150)
        # Using an environment resets its idle time.
        assert p.acquire_nowait(KEY)[0] is b
        await trio.sleep(10)
        p.release(b)  # idle again from t=260
        await trio.sleep(45)  # t=305: a expired at 300
        assert retired == [("a", 300.0)]
        await trio.sleep(300)
        assert retired == [("a", 300.0), ("b", 560.0)]
        assert p.idle_count == 0
        nursery.cancel_scope.cancel()


async def test_reaper_disabled_with_zero_timeout(autojump_clock: trio.testing.MockClock) -> None:
    p = pool(idle_timeout=0.0)
    retired: list[FakeEnv] = []

    async def retire(env: FakeEnv) -> None:
        retired.append(env)

    async with trio.open_nursery() as nursery:
        await nursery.start(p.serve_reaper, retire)
        p.release(FakeEnv("a"))
        await trio.sleep(10_000)
        assert retired == []
        nursery.cancel_scope.cancel()


# -- the pool inside the service, with an in-process fake runtime --------------------------------
#
# The fake executor's "runtime" is a trio task speaking the Runtime API over loopback, so hundreds
# of environments cost nothing but sockets.


async def _read_response(stream: trio.SocketStream) -> tuple[dict[bytes, bytes], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise trio.BrokenResourceError
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(b":", 1) for ln in head.split(b"\r\n")[1:])}
    length = int(headers.get(b"content-length", b"0"))
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    return headers, rest


class FakeRuntime:
    def __init__(self, spec: EnvironmentSpec, gate: trio.Event | None, executor: FakeExecutor) -> None:
        self.spec = spec
        self.id = f"fake-{id(self)}"
        self._send, self.output = trio.open_memory_channel[bytes](10)
        self.scope = trio.CancelScope()
        self.exited = trio.Event()
        self.gate = gate
        self.executor = executor

    async def run(self) -> None:
        try:
            await self._loop()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the Runtime API went away: a real runtime exits too
        self.exited.set()

    async def _loop(self) -> None:
        with self.scope:
            host, port = self.spec.runtime_api.rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                while True:
                    await stream.send_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n")
                    headers, body = await _read_response(stream)
                    rid = headers[b"lambda-runtime-aws-request-id"].decode()
                    self.executor.handed.append(rid)
                    if len(self.executor.handed) == self.executor.expect:
                        self.executor.all_handed.set()
                    if self.gate is not None:
                        await self.gate.wait()
                    out = b'{"echo":' + body + b',"env":"' + self.id.encode() + b'"}'
                    await stream.send_all(
                        f"POST /2018-06-01/runtime/invocation/{rid}/response HTTP/1.1\r\nHost: x\r\n"
                        f"Content-Length: {len(out)}\r\n\r\n".encode() + out
                    )
                    await _read_response(stream)

    async def wait_exit(self) -> int:
        await self.exited.wait()
        return 0

    async def memory_peak_mb(self) -> int | None:
        return 1

    async def stop(self) -> None:
        self.scope.cancel()
        self.exited.set()


class FakeExecutor:
    bind_host = "127.0.0.1"
    advertise_host = "127.0.0.1"

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.gate: trio.Event | None = None
        self.handed: list[str] = []
        self.started: list[FakeRuntime] = []
        #: Set once ``expect`` invocations have been handed to fake runtimes.
        self.expect = 0
        self.all_handed = trio.Event()

    async def check(self) -> None:
        return None

    async def reap_orphans(self) -> int:
        return 0

    async def start(self, spec: EnvironmentSpec) -> FakeRuntime:
        rt = FakeRuntime(spec, self.gate, self)
        self.started.append(rt)
        self.nursery.start_soon(rt.run)
        return rt


def _fn(**kw: Any) -> FunctionConfig:
    args: dict[str, Any] = dict(
        name="f", region="us-east-1", account="000000000000", role="arn:aws:iam::000000000000:role/r",
        runtime="python3.13", handler="app.handler", code_id="c", revision_id="r", timeout=30,
    )
    args.update(kw)
    return FunctionConfig(**args)


async def _service(nursery: trio.Nursery, tmp_path: Path, **settings: Any) -> tuple[InvokeService, FakeExecutor]:
    executor = FakeExecutor(nursery)
    svc = InvokeService(
        Settings(data_dir=tmp_path, **settings), executor, code_dir_for=lambda cid: tmp_path,
        reserved_for=lambda r, a, n: None, reserved_total=lambda r, a: 0,
    )
    await nursery.start(svc.serve)
    return svc, executor


async def test_200_warm_environments_on_a_100_port_range(nursery: trio.Nursery, tmp_path: Path) -> None:
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    base = probe.getsockname()[1]
    probe.close()
    svc, executor = await _service(
        nursery, tmp_path, runtime_api_base_port=base, runtime_api_max_port=base + 99,
    )
    executor.gate = trio.Event()
    executor.expect = 200
    fn = _fn()
    results: list[bytes] = []

    async def one(i: int) -> None:
        results.append((await svc.invoke(fn, f'{{"i":{i}}}'.encode())).payload)

    with trio.fail_after(60):
        async with trio.open_nursery() as callers:
            for i in range(200):
                callers.start_soon(one, i)
            # Every invocation is held by its own environment until the gate opens.
            await executor.all_handed.wait()
            st = svc.statistics()
            assert st.busy == 200 and st.started == 200 and st.ports_in_use == 200
            in_range = sum(1 for rt in executor.started if base <= int(rt.spec.runtime_api.rsplit(":")[1]) <= base + 99)
            assert in_range >= 50  # the range was used (some ports may belong to others) ...
            assert len({rt.spec.runtime_api for rt in executor.started}) == 200  # ... and no port twice
            executor.gate.set()
    assert len(results) == 200 and all(r.startswith(b'{"echo":{"i":') for r in results)
    # Released: at most max(4, cpus) stay idle for the function, the rest were stopped.
    st = svc.statistics()
    assert st.warm == svc._pool.max_idle_per_function
    with trio.fail_after(10):
        await svc.wait_until(lambda s: s.environments == s.warm)
    assert svc.statistics().ports_in_use == st.warm


async def test_idle_environment_reaped_by_the_service(nursery: trio.Nursery, tmp_path: Path) -> None:
    svc, executor = await _service(
        nursery, tmp_path, runtime_api_base_port=0, runtime_api_max_port=0, container_idle_timeout_seconds=1,
    )
    fn = _fn()
    with trio.fail_after(10):
        first = await svc.invoke(fn, b"{}")
        second = await svc.invoke(fn, b"{}")
    assert first.payload.split(b'"env":')[1] == second.payload.split(b'"env":')[1]  # same environment
    assert svc.statistics().warm == 1
    t0 = trio.current_time()
    with trio.fail_after(10):
        await svc.wait_until(lambda s: s.environments == 0)
    assert trio.current_time() - t0 >= 0.9
    assert executor.started[0].scope.cancel_called


async def test_ephemeral_service_stops_after_each_invoke(nursery: trio.Nursery, tmp_path: Path) -> None:
    svc, executor = await _service(nursery, tmp_path, runtime_api_base_port=0, runtime_api_max_port=0, ephemeral=True)
    fn = _fn()
    with trio.fail_after(10):
        await svc.invoke(fn, b"{}")
        await svc.invoke(fn, b"{}")
        await svc.wait_until(lambda s: s.environments == 0)
    assert len(executor.started) == 2 and svc.statistics().warm == 0


class StuckStopRuntime(FakeRuntime):
    """A runtime whose container refuses to go away: stop() never returns."""

    async def stop(self) -> None:
        await trio.sleep_forever()


async def test_port_of_an_environment_that_would_not_stop_is_never_reused(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    base = probe.getsockname()[1]
    probe.close()
    svc, executor = await _service(nursery, tmp_path, runtime_api_base_port=base, runtime_api_max_port=base)
    stuck: list[FakeRuntime] = []

    async def start(spec: EnvironmentSpec) -> FakeRuntime:
        rt = StuckStopRuntime(spec, None, executor)
        stuck.append(rt)
        executor.nursery.start_soon(rt.run)
        return rt

    executor.start = start  # type: ignore[method-assign]
    fn = _fn()
    assert (await svc.invoke(fn, b"{}")).status == 200
    first_port = int(stuck[0].spec.runtime_api.rsplit(":", 1)[1])
    assert first_port == base
    svc.drain(fn.region, fn.account, fn.name, None)  # retire it: its stop() hangs past the bound
    with trio.fail_after(60):
        await svc.wait_until(lambda st: st.environments == 0)
    assert (await svc.invoke(fn, b"{}")).status == 200
    second_port = int(stuck[1].spec.runtime_api.rsplit(":", 1)[1])
    assert second_port != first_port, "a port whose container may still run must not be handed out again"
