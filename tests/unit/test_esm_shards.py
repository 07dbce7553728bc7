"""Stream shards: ParallelizationFactor lanes, the checkpoint watermark and tumbling windows, first
as plain classes (``flocid.esm.shards``), then driven by ``serve_stream_mapping`` over an in-memory
stream and a fake function, with trio's autojump clock standing in for time (record arrival times
are on that clock too)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import trio

from flocid.esm.pollers import PollerStats, StreamPollerConfig, StreamRecord, serve_stream_mapping
from flocid.esm.shards import (
    MAX_STATE_BYTES,
    ShardLanes,
    TumblingWindow,
    Watermark,
    partition_key,
    window_start,
)

# ---- sans-IO ---------------------------------------------------------------------------------------------


def test_partition_key_of_kinesis_and_dynamodb_records() -> None:
    assert partition_key("kinesis", {"kinesis": {"partitionKey": "pk1"}}) == "pk1"
    a = {"dynamodb": {"Keys": {"id": {"S": "x"}, "sk": {"N": "1"}}}}
    b = {"dynamodb": {"Keys": {"sk": {"N": "1"}, "id": {"S": "x"}}}}
    c = {"dynamodb": {"Keys": {"id": {"S": "y"}, "sk": {"N": "1"}}}}
    assert partition_key("dynamodb", a) == partition_key("dynamodb", b) != partition_key("dynamodb", c)


def test_lanes_spread_keys_and_keep_a_key_in_one_lane() -> None:
    lanes: ShardLanes[str] = ShardLanes(4, 2)
    for i in range(12):
        lanes.add(f"k{i % 4}-{i}", f"k{i % 4}")
    assert sorted(lanes.lane_of(f"k{j}") for j in range(4)) == [0, 1, 2, 3]  # type: ignore[type-var]
    got = []
    while (b := lanes.next_batch()) is not None:
        got.append(b)
    # one batch per lane, each of one key, in the order the records were added
    assert [batch for _lane, batch in got] == [["k0-0", "k0-4"], ["k1-1", "k1-5"], ["k2-2", "k2-6"],
                                               ["k3-3", "k3-7"]]
    assert lanes.in_flight == 4 and lanes.queued == 4
    lanes.done(1)
    assert lanes.next_batch() == (1, ["k1-9"])
    assert lanes.next_batch() is None  # the other lanes are busy


def test_a_key_moves_lanes_only_when_nothing_of_it_is_left() -> None:
    lanes: ShardLanes[str] = ShardLanes(2, 10)
    lanes.add("a1", "a")
    assert lanes.next_batch() == (0, ["a1"])
    lanes.add("b1", "b")  # lane 0 is loaded: b goes to lane 1
    lanes.add("a2", "a")  # a is in flight on lane 0: it queues behind it, never beside it
    assert lanes.lane_of("a") == 0 and lanes.lane_of("b") == 1
    assert lanes.next_batch() == (1, ["b1"])
    assert lanes.next_batch() is None
    lanes.done(0)
    assert lanes.next_batch() == (0, ["a2"])
    lanes.done(0)
    lanes.done(1)
    assert lanes.lane_of("a") is None and lanes.lane_of("b") is None
    with pytest.raises(ValueError):
        lanes.done(0)


def test_watermark_never_passes_an_unsettled_record() -> None:
    mark = Watermark()
    mark.track(["1", "2", "3", "4", "5"])
    assert mark.settle(["2", "3"]) is None and mark.checkpoint is None
    assert mark.settle(["1"]) == "3"
    assert mark.settle(["5"]) is None and mark.checkpoint == "3"
    assert mark.pending == 2
    assert mark.settle(["4"]) == "5" and mark.pending == 0
    mark.track(["6"])
    assert "6" in mark and "5" not in mark
    with pytest.raises(ValueError):
        mark.track(["6"])
    assert "6" in mark and "5" not in mark
    with pytest.raises(ValueError):
        mark.settle(["9"])


def test_tumbling_window_event_and_response() -> None:
    assert window_start(125.5, 60) == 120 and window_start(120, 60) == 120
    w = TumblingWindow(1607497440, 120, "shardId-000000000006", "arn:aws:kinesis:us-east-1:1:stream/s")
    assert w.contains(1607497559.9) and not w.contains(1607497560)
    ev = w.event([{"r": 1}], final=False)
    assert ev == {
        "Records": [{"r": 1}], "window": {"start": "2020-12-09T07:04:00Z", "end": "2020-12-09T07:06:00Z"},
        "state": {}, "shardId": "shardId-000000000006", "eventSourceARN": "arn:aws:kinesis:us-east-1:1:stream/s",
        "isFinalInvokeForWindow": False, "isWindowTerminatedEarly": False,
    }
    assert TumblingWindow.response_state(b'{"state": {"1": 282}, "batchItemFailures": []}') == {"1": 282}
    for bad in (b"", b"null", b"{}", b'{"state": null}', b'{"state": [1]}', b"not json"):
        assert TumblingWindow.response_state(bad) is None
    w.accept({"n": 1})
    assert w.event([], final=True)["state"] == {"n": 1} and not w.terminated_early
    w.accept({"big": "x" * MAX_STATE_BYTES})
    assert w.terminated_early
    final = w.event([], final=True)
    assert final["isFinalInvokeForWindow"] and final["isWindowTerminatedEarly"]
    w.restart_after_early_end()
    assert w.state == {} and w.event([], final=False)["window"]["start"] == "2020-12-09T07:04:00Z"


# ---- the shell over an in-memory stream ------------------------------------------------------------------


class MemStream:
    """One shard; a record becomes readable at its arrival time (on the trio clock)."""

    def __init__(self) -> None:
        self.recs: list[StreamRecord] = []

    def put(self, key: str, data: str) -> None:
        seq = str(len(self.recs) + 1).zfill(4)
        self.recs.append(StreamRecord(seq, trio.current_time(), {
            "kinesis": {"partitionKey": key, "sequenceNumber": seq, "data": data}}))

    async def shards(self, arn: str) -> list[str]:
        return ["shardId-0"]

    async def iterator(self, arn: str, shard: str, position: str, after: str | None,
                       timestamp: float | None) -> str:
        if after is not None:
            return str(int(after))
        return "0" if position == "TRIM_HORIZON" else str(len(self.recs))

    async def records(self, arn: str, iterator: str, limit: int) -> tuple[str, list[StreamRecord]]:
        await trio.sleep(0.01)
        start = int(iterator)
        now = trio.current_time()
        got = [r for r in self.recs[start:start + limit] if r.arrival <= now]
        return str(start + len(got)), got


def cfg(**kw: Any) -> StreamPollerConfig:
    base: dict[str, Any] = dict(
        uuid="u", kind="kinesis", stream_arn="arn:aws:kinesis:us-east-1:000000000000:stream/s",
        function_arn="arn:aws:lambda:us-east-1:000000000000:function:f", batch_size=2,
        starting_position="TRIM_HORIZON", starting_timestamp=None, max_retries=-1, max_age=-1, bisect=False,
        report_failures=False, patterns=[], poll_interval=0.5)
    base.update(kw)
    return StreamPollerConfig(**base)


class Harness:
    def __init__(self, stream: MemStream) -> None:
        self.stream = stream
        self.saved: list[str] = []
        self.failures: list[dict[str, Any]] = []
        self.stop = trio.Event()
        self.stats = PollerStats()
        self.changed = trio.Event()

    async def save(self, shard: str, seq: str) -> None:
        self.saved.append(seq)

    async def on_failure(self, doc: dict[str, Any]) -> None:
        self.failures.append(doc)

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait(self, pred: Any) -> None:
        with trio.fail_after(600):
            while not pred():
                await self.changed.wait()

    async def run(self, c: StreamPollerConfig, invoke: Any, nursery: trio.Nursery,
                  checkpoints: dict[str, str] | None = None) -> None:
        await nursery.start(lambda task_status: serve_stream_mapping(
            c, self.stream, invoke, checkpoints or {}, self.save, self.on_failure, self.stop, self.stats,
            self.poke, clock=trio.current_time, task_status=task_status))


async def test_parallel_lanes_overlap_keep_key_order_and_checkpoint_behind_the_slowest(autojump_clock: Any) -> None:
    stream = MemStream()
    sent = [(f"k{i % 4}", f"k{i % 4}-{i}") for i in range(40)]
    for key, data in sent:
        stream.put(key, data)
    h = Harness(stream)
    seen: list[tuple[float, float, list[str]]] = []
    done: set[str] = set()
    running: dict[str, int] = {}

    async def invoke(payload: bytes) -> tuple[bool, bytes]:
        recs = json.loads(payload)["Records"]
        keys = {r["kinesis"]["partitionKey"] for r in recs}
        for k in keys:
            assert running.get(k, 0) == 0, f"{k} in two concurrent batches"
            running[k] = 1
        t0 = trio.current_time()
        await trio.sleep(5 if "k0" in keys else 1)  # k0 is slow: the others overtake it
        for k in keys:
            running[k] = 0
        seen.append((t0, trio.current_time(), [r["kinesis"]["data"] for r in recs]))
        done.update(r["kinesis"]["sequenceNumber"] for r in recs)
        return True, b""

    async def check_save(shard: str, seq: str) -> None:
        # the checkpoint never passes a record whose batch has not come back
        assert all(r.sequence in done for r in stream.recs if r.sequence <= seq)
        h.saved.append(seq)

    h.save = check_save  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await h.run(cfg(parallelization=4), invoke, nursery)
        await h.wait(lambda: len(done) == 40 and h.saved and h.saved[-1] == "0040")
        h.stop.set()
    assert h.stats.max_in_flight == 4
    events = sorted([(t0, 1) for t0, _t1, _d in seen] + [(t1, -1) for _t0, t1, _d in seen])
    level = peak = 0
    for _t, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 4
    delivered = [d for _t0, _t1, ds in sorted(seen) for d in ds]
    assert sorted(delivered) == sorted(d for _k, d in sent)  # each exactly once
    for k in ("k0", "k1", "k2", "k3"):
        assert [d for d in delivered if d.startswith(k + "-")] == [d for kk, d in sent if kk == k]
    assert h.saved == sorted(h.saved)  # stored in order, never backwards


async def test_a_failing_key_holds_the_checkpoint_but_not_the_other_lanes(autojump_clock: Any) -> None:
    stream = MemStream()
    for i in range(12):
        stream.put(f"k{i % 3}", f"k{i % 3}-{i}")
    h = Harness(stream)
    calls: list[list[str]] = []
    fails = {"k0-3": 3}

    async def invoke(payload: bytes) -> tuple[bool, bytes]:
        data = [r["kinesis"]["data"] for r in json.loads(payload)["Records"]]
        calls.append(data)
        await trio.sleep(1)
        for d in data:
            if fails.get(d, 0) > 0:
                fails[d] -= 1
                return False, b'{"errorMessage": "boom"}'
        return True, b""

    async with trio.open_nursery() as nursery:
        await h.run(cfg(parallelization=3, batch_size=1), invoke, nursery)
        # while k0-3 keeps failing, k1 and k2 are done and the checkpoint waits before k0-3 (seq 4)
        await h.wait(lambda: all(any(c == [f"k{k}-{i}"] for c in calls) for k in (1, 2) for i in range(k, 12, 3)))
        assert fails["k0-3"] > 0 and h.saved and max(h.saved) < "0004"
        await h.wait(lambda: bool(h.saved) and h.saved[-1] == "0012")
        h.stop.set()
    assert [c for c in calls if c == ["k0-3"]] == [["k0-3"]] * 4  # three failures, then the success
    assert sorted(c[0] for c in calls if c != ["k0-3"]) == sorted(
        f"k{i % 3}-{i}" for i in range(12) if i != 3)
    assert h.stats.failed == 3


async def test_a_restart_resumes_at_the_watermark(autojump_clock: Any) -> None:
    stream = MemStream()
    for i in range(6):
        stream.put(f"k{i % 2}", f"d{i}")
    h = Harness(stream)
    got: list[str] = []

    async def invoke(payload: bytes) -> tuple[bool, bytes]:
        got.extend(r["kinesis"]["data"] for r in json.loads(payload)["Records"])
        return True, b""

    async with trio.open_nursery() as nursery:
        await h.run(cfg(parallelization=2), invoke, nursery, checkpoints={"shardId-0": "0003"})
        await h.wait(lambda: len(got) == 3)
        h.stop.set()
    assert sorted(got) == ["d3", "d4", "d5"]


async def test_tumbling_window_state_accumulates_and_a_final_invoke_closes_each_window(autojump_clock: Any) -> None:
    W = 10
    stream = MemStream()
    h = Harness(stream)
    invokes: list[dict[str, Any]] = []
    failed_once = False

    async def invoke(payload: bytes) -> tuple[bool, bytes]:
        nonlocal failed_once
        ev = json.loads(payload)
        invokes.append(ev)
        if ev["Records"] and not failed_once:
            failed_once = True
            return True, b"null"  # no state: AWS counts it a failed invoke, retried with the same state
        n = ev["state"].get("n", 0) + len(ev["Records"])
        return True, json.dumps({"state": {"n": n}, "batchItemFailures": []}).encode()

    await trio.sleep_until(math.ceil(trio.current_time() / W) * W + W)
    base = trio.current_time()
    async with trio.open_nursery() as nursery:
        await h.run(cfg(tumbling_window=W, batch_size=2, poll_interval=0.5), invoke, nursery)
        for t, key in ((1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e"), (12, "f"), (13, "g")):
            await trio.sleep_until(base + t)
            stream.put(key, key)
        await h.wait(lambda: sum(ev["isFinalInvokeForWindow"] for ev in invokes) == 2)
        h.stop.set()
    aggregation = [ev for ev in invokes if not ev["isFinalInvokeForWindow"]]
    finals = [ev for ev in invokes if ev["isFinalInvokeForWindow"]]
    assert aggregation[0]["Records"] == aggregation[1]["Records"] and aggregation[0]["state"] == {}  # the retry
    assert all(ev["shardId"] == "shardId-0" and ev["eventSourceARN"] == stream_arn() for ev in invokes)
    count = 0
    for ev in (ev for ev in aggregation[1:] if ev["window"] == finals[0]["window"]):
        assert ev["state"] == ({"n": count} if count else {})  # what the previous invoke returned
        count += len(ev["Records"])
    assert count == 5
    assert finals[0]["Records"] == [] and finals[0]["state"] == {"n": 5}
    assert not finals[0]["isWindowTerminatedEarly"]
    assert finals[1]["state"] == {"n": 2} and finals[1]["window"] != finals[0]["window"]
    assert [ev["window"] for ev in finals] == [
        TumblingWindow(base, W, "", "").event([], final=True)["window"],
        TumblingWindow(base + W, W, "", "").event([], final=True)["window"]]
    # the checkpoint moved past each window after its final invoke only
    assert h.saved == ["0005", "0007"]


def stream_arn() -> str:
    return "arn:aws:kinesis:us-east-1:000000000000:stream/s"


async def test_tumbling_window_restart_replays_an_unfinished_window(autojump_clock: Any) -> None:
    W = 100
    stream = MemStream()
    await trio.sleep_until(math.ceil(trio.current_time() / W) * W + 1)
    for key in "abc":
        stream.put(key, key)
    h = Harness(stream)
    invokes: list[dict[str, Any]] = []

    async def invoke(payload: bytes) -> tuple[bool, bytes]:
        ev = json.loads(payload)
        invokes.append(ev)
        return True, json.dumps({"state": {"n": ev["state"].get("n", 0) + len(ev["Records"])}}).encode()

    async with trio.open_nursery() as nursery:
        await h.run(cfg(tumbling_window=W, batch_size=10), invoke, nursery)
        await h.wait(lambda: len(invokes) == 1)
        h.stop.set()  # before the window ends: nothing checkpointed
    assert h.saved == [] and not invokes[0]["isFinalInvokeForWindow"]
    again = Harness(stream)
    invokes.clear()
    async with trio.open_nursery() as nursery:
        await again.run(cfg(tumbling_window=W, batch_size=10), invoke, nursery)
        await again.wait(lambda: any(ev["isFinalInvokeForWindow"] for ev in invokes))
        again.stop.set()
    # the unfinished window came again from its first record, with a fresh state
    assert [[r["kinesis"]["data"] for r in ev["Records"]] for ev in invokes] == [["a", "b", "c"], []]
    assert invokes[0]["state"] == {} and invokes[1]["state"] == {"n": 3}
    assert again.saved == ["0003"]


async def test_partial_responses_bisect_and_on_failure_work_per_batch_in_parallel(autojump_clock: Any) -> None:
    stream = MemStream()
    for key, data in (("a", "a1"), ("a", "boom"), ("a", "a3"), ("b", "b1"), ("b", "p"), ("b", "b3")):
        stream.put(key, data)
    h = Harness(stream)
    calls: list[list[str]] = []
    partial_once = True

    async def invoke(payload: bytes) -> tuple[bool, bytes]:
        nonlocal partial_once
        recs = json.loads(payload)["Records"]
        data = [r["kinesis"]["data"] for r in recs]
        calls.append(data)
        await trio.sleep(1)
        if "boom" in data:
            return False, b'{"errorMessage": "boom"}'
        if "p" in data and partial_once:
            partial_once = False
            seq = next(r["kinesis"]["sequenceNumber"] for r in recs if r["kinesis"]["data"] == "p")
            return True, json.dumps({"batchItemFailures": [{"itemIdentifier": seq}]}).encode()
        return True, b""

    async with trio.open_nursery() as nursery:
        await h.run(cfg(parallelization=2, batch_size=3, report_failures=True, bisect=True, max_retries=1),
                    invoke, nursery)
        await h.wait(lambda: bool(h.saved) and h.saved[-1] == "0006")
        h.stop.set()
    assert calls[:2] == [["a1", "boom", "a3"], ["b1", "p", "b3"]]  # the two keys' batches side by side
    assert ["p", "b3"] in calls and calls.count(["b1", "p", "b3"]) == 1  # retried from the failed item on
    # bisected down to the poison record, which went to OnFailure after its retry
    assert calls.count(["boom"]) == 2 and ["a3"] in calls
    assert len(h.failures) == 1
    info = h.failures[0]["KinesisBatchInfo"]
    assert info["batchSize"] == 1 and info["startSequenceNumber"] == "0002"
    assert h.failures[0]["requestContext"]["condition"] == "RetryAttemptsExhausted"
