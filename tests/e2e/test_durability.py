"""A real ``flocid serve`` process: clean stop, restart, ``kill -9`` mid-stream, start-up errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tests.conftest import PY_HANDLER, ROLE, client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    def __init__(self, data_dir: Path, port: int, executor: str = "none") -> None:
        self.data_dir, self.port, self.executor = data_dir, port, executor
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"serve-{port}.log"

    def start(self) -> None:
        env = {**os.environ, "FLOCI_SERVICES_LAMBDA_EXECUTOR": self.executor}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flocid", "serve", "--port", str(self.port), "--data-dir",
             str(self.data_dir)],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("flocid serve did not start:\n" + self.log.read_text())

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def term(self) -> float:
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)
        return time.monotonic() - t0

    @property
    def lam(self) -> Any:
        return client(f"http://127.0.0.1:{self.port}")




def create(lam: Any, name: str, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = lam.create_function(
        FunctionName=name, Runtime="python3.13", Role=ROLE, Handler="index.handler",
        Code={"ZipFile": PY_HANDLER}, **kw)
    return out


def test_state_survives_clean_restart(server: Server) -> None:
    lam = server.lam
    create(lam, "keep", Publish=True, Tags={"t": "1"})
    lam.create_alias(FunctionName="keep", Name="live", FunctionVersion="1")
    lam.add_permission(FunctionName="keep", StatementId="s", Action="lambda:InvokeFunction", Principal="*")
    lam.put_function_concurrency(FunctionName="keep", ReservedConcurrentExecutions=3)
    lam.create_function_url_config(FunctionName="keep", AuthType="NONE")
    before = lam.get_function(FunctionName="keep")
    took = server.term()
    assert server.proc is not None and server.proc.returncode == 0
    assert took < 5, f"SIGTERM took {took:.1f}s"
    server.start()
    lam = server.lam
    after = lam.get_function(FunctionName="keep")
    assert after["Configuration"] == before["Configuration"]
    assert after["Tags"] == {"t": "1"} and after["Concurrency"] == {"ReservedConcurrentExecutions": 3}
    assert lam.get_alias(FunctionName="keep", Name="live")["FunctionVersion"] == "1"
    assert "Sid" in lam.get_policy(FunctionName="keep")["Policy"]
    assert lam.get_function_url_config(FunctionName="keep")["AuthType"] == "NONE"
    # The version counter survived too: the next publish is 2, not 1 again.
    lam.update_function_configuration(FunctionName="keep", Timeout=9)
    assert lam.publish_version(FunctionName="keep")["Version"] == "2"


def test_kill9_keeps_every_acknowledged_change(server: Server) -> None:
    """Writes stream in; the server is killed at an arbitrary moment; every acknowledged write is
    there after a restart, and nothing half-written is."""
    import threading

    acked: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        lam = server.lam
        i = 0
        while not stop.is_set():
            name = f"k{i}"
            try:
                create(lam, name, Publish=True, Tags={"n": str(i)})
            except (ClientError, EndpointConnectionError, Exception):
                return
            acked.append(name)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 15 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.kill9()
    stop.set()
    t.join(10)
    assert len(acked) >= 15
    server.start()
    lam = server.lam
    listed = {f["FunctionName"]: f for f in lam.list_functions(MaxItems=1000)["Functions"]}
    for name in acked:
        assert name in listed, f"acknowledged {name} lost after kill -9"
        got = lam.get_function(FunctionName=name)
        assert got["Tags"] == {"n": name[1:]}
        assert lam.get_function_configuration(FunctionName=name, Qualifier="1")["Version"] == "1"
    # Anything beyond the acknowledged ones (at most the one in flight) is whole, not half-written.
    for name in set(listed) - set(acked):
        assert lam.get_function(FunctionName=name)["Configuration"]["CodeSize"] == len(PY_HANDLER)
        assert lam.get_function_configuration(FunctionName=name, Qualifier="1")["Version"] == "1"


def test_kill9_keeps_the_companion_services_state(server: Server) -> None:
    """S3, SQS, Kinesis and DynamoDB written through boto3; once the periodic snapshot holds the
    last write of each (its file is newer than that write), SIGKILL; a new process on the same data
    dir has all of it."""
    url = f"http://127.0.0.1:{server.port}"
    s3, sqs = client(url, service="s3"), client(url, service="sqs")
    kin, ddb = client(url, service="kinesis"), client(url, service="dynamodb")
    snap = server.data_dir / "services"
    written: dict[str, float] = {}
    big = os.urandom(300_000)  # content in a file of its own (over 64 KiB)

    s3.create_bucket(Bucket="durable")
    s3.put_object(Bucket="durable", Key="small.txt", Body=b"hello")
    s3.put_object(Bucket="durable", Key="code.zip", Body=big)
    written["s3.pickle"] = time.time()
    q = sqs.create_queue(QueueName="durable-q")["QueueUrl"]
    for i in range(5):
        sqs.send_message(QueueUrl=q, MessageBody=f"m{i}")
    got = sqs.receive_message(QueueUrl=q, MaxNumberOfMessages=1)["Messages"][0]
    sqs.delete_message(QueueUrl=q, ReceiptHandle=got["ReceiptHandle"])
    written["sqs.pickle"] = time.time()
    kin.create_stream(StreamName="durable-s", ShardCount=1)
    seqs = [kin.put_record(StreamName="durable-s", Data=f"r{i}".encode(), PartitionKey="p")["SequenceNumber"]
            for i in range(4)]
    written["kinesis.pickle"] = time.time()
    ddb.create_table(TableName="durable-t", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                     BillingMode="PAY_PER_REQUEST")
    for i in range(3):
        ddb.put_item(TableName="durable-t", Item={"id": {"S": f"i{i}"}, "n": {"N": str(i)}})
    written["dynamodb.pickle"] = time.time()

    def fresh() -> bool:
        try:
            return all((snap / name).stat().st_mtime > t for name, t in written.items())
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 15  # the interval is 1 s by default
    while not fresh():
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.05)
    server.kill9()
    server.start()

    s3, sqs = client(url, service="s3"), client(url, service="sqs")
    kin, ddb = client(url, service="kinesis"), client(url, service="dynamodb")
    assert s3.get_object(Bucket="durable", Key="small.txt")["Body"].read() == b"hello"
    assert s3.get_object(Bucket="durable", Key="code.zip")["Body"].read() == big
    q = sqs.get_queue_url(QueueName="durable-q")["QueueUrl"]
    bodies = [m["Body"] for m in sqs.receive_message(QueueUrl=q, MaxNumberOfMessages=10)["Messages"]]
    assert sorted(bodies) == sorted(f"m{i}" for i in range(5) if f"m{i}" != got["Body"])
    shard = kin.describe_stream(StreamName="durable-s")["StreamDescription"]["Shards"][0]["ShardId"]
    it = kin.get_shard_iterator(StreamName="durable-s", ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    records = kin.get_records(ShardIterator=it["ShardIterator"])["Records"]
    assert [(r["SequenceNumber"], r["Data"]) for r in records] == [(seq, f"r{i}".encode()) for i, seq in enumerate(seqs)]
    items = ddb.scan(TableName="durable-t")["Items"]
    assert sorted((i["id"]["S"], i["n"]["N"]) for i in items) == [("i0", "0"), ("i1", "1"), ("i2", "2")]


def test_port_taken_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "flocid", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d"),
             "--executor", "none"],
            capture_output=True, text=True, timeout=30,
        )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("flocid:")]
    assert lines == [f"flocid: cannot listen on 127.0.0.1:{port}: the port is already in use "
                     "(pick another with --port)"], proc.stderr
    assert "Traceback" not in proc.stderr


def test_unwritable_data_dir_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = subprocess.run(
        [sys.executable, "-m", "flocid", "serve", "--port", "0", "--data-dir", str(blocker / "data"),
         "--executor", "none"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"flocid: data dir {blocker / 'data'} is not writable"), proc.stderr


def test_serve_help_explains_options() -> None:
    out = subprocess.run([sys.executable, "-m", "flocid", "serve", "--help"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0
    for needle in ("--port", "--data-dir", "FLOCI_SERVICES_LAMBDA_DEFAULT_MEMORY_MB",
                   "FLOCI_SERVICES_LAMBDA_REGION_CONCURRENCY_LIMIT", "SIGTERM"):
        assert needle in out.stdout
    # every setting flocid reads from the environment is named there, flag or not
    from flocid.config import _ENV_NAMES

    missing = [name for names in _ENV_NAMES.values() for name in names if name not in out.stdout]
    assert not missing, f"serve --help does not name {missing}"


def test_unreferenced_code_is_collected_at_restart(server: Server) -> None:
    from tests.conftest import make_zip

    lam = server.lam
    create(lam, "gc")
    lam.update_function_code(FunctionName="gc", ZipFile=make_zip({"index.py": "def handler(e, c): return 2\n"}))
    zips = server.data_dir / "code" / "zips"
    assert len(list(zips.iterdir())) == 2
    server.term()
    server.start()
    assert len(list(zips.iterdir())) == 1
    assert server.lam.get_function(FunctionName="gc")["Configuration"]["CodeSize"] > 0


def test_sigterm_lets_an_invocation_in_flight_finish(tmp_path: Path) -> None:
    import json
    import threading

    from tests.conftest import make_zip

    env = {**os.environ, "FLOCI_SERVICES_LAMBDA_EXECUTOR": "process"}
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flocid", "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env,
    )
    try:
        lam = client(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while True:
            try:
                lam.list_functions()
                break
            except EndpointConnectionError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        lam.create_function(
            FunctionName="slow", Runtime="python3.13", Role=ROLE, Handler="index.handler", Timeout=10,
            Code={"ZipFile": make_zip({"index.py": "import time\ndef handler(e, c):\n    time.sleep(1.5)\n    return 'done'\n"})},
        )
        lam.invoke(FunctionName="slow", Payload=b"{}")  # warm
        result: dict[str, Any] = {}

        def call() -> None:
            out = lam.invoke(FunctionName="slow", Payload=b"{}")
            result["status"] = out["StatusCode"]
            result["body"] = json.loads(out["Payload"].read())
            result["error"] = out.get("FunctionError")

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.4)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        t.join(15)
        assert result == {"status": 200, "body": "done", "error": None}, (result, log.read_text())
        assert proc.wait(15) == 0
        assert time.monotonic() - t0 < 7
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


STREAM_RECORDER = (
    "import base64, json\n"
    "OUT = {out!r}\n"
    "def handler(event, context):\n"
    "    with open(OUT, 'a') as f:\n"
    "        for r in event['Records']:\n"
    "            if r['eventSource'] == 'aws:kinesis':\n"
    "                row = ['kinesis', base64.b64decode(r['kinesis']['data']).decode()]\n"
    "            else:\n"
    "                row = ['dynamodb', r['eventName'] + ' ' + r['dynamodb']['Keys']['id']['S']]\n"
    "            f.write(json.dumps(row) + '\\n')\n"
)


def test_stream_mappings_resume_after_sigterm_and_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real process: Kinesis and DynamoDB Streams mappings handle records, SIGTERM, a new process
    on the same data dir, more records: the function sees exactly the new ones, in order."""
    import json

    pytest.importorskip("awslambdaric", reason="the process executor runs handlers with awslambdaric")
    from tests.conftest import make_zip

    out = tmp_path / "seen.jsonl"

    def seen() -> list[list[str]]:
        return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []

    def wait_seen(n: int, server: Server) -> None:
        deadline = time.monotonic() + 30
        while len(seen()) < n:
            assert time.monotonic() < deadline, (seen(), server.log.read_text())
            time.sleep(0.05)

    monkeypatch.setenv("FLOCI_SERVICES_LAMBDA_POLL_INTERVAL_MS", "50")
    server = Server(tmp_path / "data", free_port(), executor="process")
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        kin, ddb, lam = client(url, service="kinesis"), client(url, service="dynamodb"), server.lam
        kin.create_stream(StreamName="s", ShardCount=1)
        kin_arn = kin.describe_stream(StreamName="s")["StreamDescription"]["StreamARN"]
        ddb_arn = ddb.create_table(
            TableName="t", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"},
        )["TableDescription"]["LatestStreamArn"]
        lam.create_function(FunctionName="rec", Runtime="python3.13", Role=ROLE, Handler="index.handler",
                            Code={"ZipFile": make_zip({"index.py": STREAM_RECORDER.format(out=str(out))})})
        for arn in (kin_arn, ddb_arn):
            lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="rec", StartingPosition="TRIM_HORIZON",
                                            BatchSize=2)
        for i in range(5):
            kin.put_record(StreamName="s", Data=f"k{i}".encode(), PartitionKey="p")
            ddb.put_item(TableName="t", Item={"id": {"S": f"a{i}"}})
        wait_seen(10, server)
        assert server.term() < 7 and server.proc is not None and server.proc.returncode == 0

        server.start()
        kin, ddb = client(url, service="kinesis"), client(url, service="dynamodb")
        for i in range(5, 8):
            kin.put_record(StreamName="s", Data=f"k{i}".encode(), PartitionKey="p")
        ddb.put_item(TableName="t", Item={"id": {"S": "a5"}})
        ddb.delete_item(TableName="t", Key={"id": {"S": "a0"}})
        wait_seen(15, server)
        server.term()
        rows = seen()
        assert [d for s, d in rows if s == "kinesis"] == [f"k{i}" for i in range(8)]
        assert [d for s, d in rows if s == "dynamodb"] == [f"INSERT a{i}" for i in range(6)] + ["REMOVE a0"]
        assert "restored 0 bucket(s) with 0 object(s), 0 queue(s) with 0 message(s), 1 Kinesis stream(s) " \
               "with 5 record(s), 1 DynamoDB table(s) with 5 item(s) and 5 stream record(s)" in server.log.read_text()
    finally:
        if server.proc and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
