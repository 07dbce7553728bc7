"""Warm-invoke benchmark of the data plane (no HTTP API, no Docker). Prints figures; asserts nothing.

    python bench/bench_invoke.py [--n 2000] [--concurrency 4]

1. ``service``: ``InvokeService.invoke`` with the process executor and a no-op Python handler
   (real awslambdaric), warm environment: p50 / p99 / mean per invoke.
2. ``hand-off``: the baseline in the same run: one ``RuntimeApiServer`` + one awslambdaric process,
   an ``Invocation`` submitted and awaited directly (no limits, pool, logs or service layer).
3. ``throughput``: ``--concurrency`` callers in parallel through the service (as many warm
   environments), invokes per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flocid.config import Settings  # noqa: E402
from flocid.executors.process import ProcessExecutor  # noqa: E402
from flocid.invoke.service import InvokeService  # noqa: E402
from flocid.lambda_.models import FunctionConfig  # noqa: E402
from flocid.runtime_api.protocol import Invocation  # noqa: E402
from flocid.runtime_api.server import PortAllocator, RuntimeApiServer  # noqa: E402

HANDLER = "def handler(event, context):\n    return event\n"
PAYLOAD = b'{"hello":"world"}'


def summary(name: str, samples: list[float]) -> None:
    s = sorted(samples)
    p50 = s[len(s) // 2] * 1000
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))] * 1000
    mean = statistics.fmean(s) * 1000
    print(f"{name:<28} n={len(s):<6} p50={p50:7.3f} ms  p99={p99:7.3f} ms  mean={mean:7.3f} ms  min={s[0] * 1000:7.3f} ms")


def function(code_id: str) -> FunctionConfig:
    return FunctionConfig(
        name="bench", region="us-east-1", account="000000000000", role="arn:aws:iam::000000000000:role/r",
        runtime="python3.11", handler="app.handler", code_id=code_id, revision_id="r1", timeout=30,
    )


async def bench_service(code_root: Path, n: int, concurrency: int) -> None:
    settings = Settings(data_dir=code_root, runtime_api_base_port=0, runtime_api_max_port=0)
    svc = InvokeService(
        settings, ProcessExecutor(), code_dir_for=lambda cid: code_root / cid,
        reserved_for=lambda r, a, name: None, reserved_total=lambda r, a: 0,
    )
    fn = function("app")
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.serve)
        t0 = time.perf_counter()
        await svc.invoke(fn, PAYLOAD)
        print(f"{'service cold start':<28} {(time.perf_counter() - t0) * 1000:.1f} ms (process spawn + awslambdaric import)")
        for _ in range(200):
            await svc.invoke(fn, PAYLOAD)
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            result = await svc.invoke(fn, PAYLOAD)
            samples.append(time.perf_counter() - t)
            assert result.function_error is None, result
        summary("service warm invoke", samples)

        samples = []
        for _ in range(n // 4):
            t = time.perf_counter()
            await svc.invoke(fn, PAYLOAD, log_type="Tail")
            samples.append(time.perf_counter() - t)
        summary("service warm invoke (Tail)", samples)

        # Throughput: warm `concurrency` environments first.
        async with trio.open_nursery() as warmers:
            for _ in range(concurrency):
                warmers.start_soon(svc.invoke, fn, PAYLOAD)
        per_caller = max(1, n // concurrency)
        count = 0

        async def caller() -> None:
            nonlocal count
            for _ in range(per_caller):
                await svc.invoke(fn, PAYLOAD)
                count += 1

        t = time.perf_counter()
        async with trio.open_nursery() as callers:
            for _ in range(concurrency):
                callers.start_soon(caller)
        elapsed = time.perf_counter() - t
        st = svc.statistics()
        print(
            f"{'service throughput':<28} {concurrency} callers: {count / elapsed:8.0f} invokes/s "
            f"({count} in {elapsed:.2f} s; environments={st.environments}, cold starts={st.started})"
        )
        nursery.cancel_scope.cancel()


async def bench_handoff(code_root: Path, n: int) -> None:
    """Baseline: the Runtime API server and awslambdaric, nothing of the service layer."""
    listener, port = await PortAllocator(0, 0).open_listener("127.0.0.1")
    server = RuntimeApiServer()
    env = dict(os.environ)
    env.update(AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}", PYTHONPATH=str(code_root / "app"))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listener)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "awslambdaric", "app.handler"], env=env, cwd=str(code_root / "app"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:

            async def once() -> float:
                done = trio.Event()
                inv = Invocation(
                    request_id=str(uuid.uuid4()), payload=PAYLOAD, function_arn="arn:x", timeout_ms=30000,
                    trace_id="Root=1-00000000-000000000000000000000000;Sampled=0", on_complete=done.set,
                )
                t = time.perf_counter()
                server.submit(inv)
                await done.wait()
                return time.perf_counter() - t

            for _ in range(200):
                await once()
            summary("hand-off baseline", [await once() for _ in range(n)])
        finally:
            proc.kill()
            await proc.wait()
            nursery.cancel_scope.cancel()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}, {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "app").mkdir()
        (root / "app" / "app.py").write_text(HANDLER)
        await bench_handoff(root, args.n)
        await bench_service(root, args.n, args.concurrency)


if __name__ == "__main__":
    trio.run(main)
