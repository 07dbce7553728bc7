"""SQS -> Lambda throughput through an event source mapping. Prints figures; asserts nothing.

    python bench/bench_esm.py [--n 2000] [--batch 10] [--concurrency 5 10]

An in-process daemon (process executor, real awslambdaric, embedded moto SQS); a no-op Python
handler. For each MaximumConcurrency: fill a queue with ``--n`` messages, create the mapping, and
time until every message was handled and deleted: messages/s, batches, peak batches in flight.
Filling the queue is slow (moto's SendMessage costs O(queue length) per message); it is not timed.
The daemon is built as ``flocid serve`` builds it (ESM included), with the process executor.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import flocid.daemon as daemon_mod
from flocid.config import Settings
from flocid.esm.service import EsmService

NOOP = "def handler(event, context):\n    return None\n"


def _zip(src: str) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.py", src)
    return buf.getvalue()


def _client(url: str, service: str) -> Any:
    import boto3
    import botocore.config

    return boto3.client(service, endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test",
                        config=botocore.config.Config(retries={"max_attempts": 1}))


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(port=0, data_dir=Path(tmp) / "data", executor="process", listen_docker_bridge=False,
                            poll_interval_ms=20)
        async with trio.open_nursery() as nursery:
            d = await nursery.start(daemon_mod.run_daemon, settings)
            esm: EsmService = d.esm
            lam, sqs = _client(d.url, "lambda"), _client(d.url, "sqs")
            await trio.to_thread.run_sync(lambda: lam.create_function(
                FunctionName="noop", Runtime="python3.13", Role="arn:aws:iam::000000000000:role/r",
                Handler="index.handler", Code={"ZipFile": _zip(NOOP)}))
            print(f"SQS -> no-op function, {args.n} messages, BatchSize {args.batch}")
            for conc in args.concurrency:
                await _one(args, esm, lam, sqs, conc)
            nursery.cancel_scope.cancel()


async def _one(args: argparse.Namespace, esm: EsmService, lam: Any, sqs: Any, conc: int) -> None:
    name = f"bench-{conc}"
    arn = f"arn:aws:sqs:us-east-1:000000000000:{name}"
    url = (await trio.to_thread.run_sync(lambda: sqs.create_queue(QueueName=name)))["QueueUrl"]

    def fill() -> None:
        for i in range(0, args.n, 10):
            sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(j), "MessageBody": f'{{"i": {i + j}}}'} for j in range(min(10, args.n - i))])

    await trio.to_thread.run_sync(fill)
    t0 = time.perf_counter()
    m = await trio.to_thread.run_sync(lambda: lam.create_event_source_mapping(
        EventSourceArn=arn, FunctionName="noop", BatchSize=args.batch, ScalingConfig={"MaximumConcurrency": conc}))
    st = None
    with trio.move_on_after(args.timeout) as bound:
        while (st := esm.statistics(m["UUID"])) is None or st.records < args.n:
            await esm.wait_activity()
    if bound.cancelled_caught or st is None:
        print(f"  MaximumConcurrency {conc:>3}: gave up after {args.timeout} s: {st}")
    else:
        dt = time.perf_counter() - t0
        print(f"  MaximumConcurrency {conc:>3}: {args.n / dt:8.0f} messages/s  ({dt:.2f} s, "
              f"{st.batches} batches, peak {st.max_in_flight} in flight, {st.throttled} throttled)")
    await trio.to_thread.run_sync(lambda: lam.update_event_source_mapping(UUID=m["UUID"], Enabled=False))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--concurrency", type=int, nargs="+", default=[2, 5])
    trio.run(run, p.parse_args())


if __name__ == "__main__":
    main()
