"""HTTP-level benchmark on the Docker executor, with its baselines in the same run. Prints figures;
asserts nothing.

    python bench/bench_http.py [--n 2000] [--boto-n 300] [--concurrency 4] [--cold-n 5]
                               [--fanout 200] [--sleep 2.0]

flocid runs as its own process (``python -m flocid serve --executor docker --ecr-base-uri
flocid.local``); functions are created with boto3; the main client is a raw keep-alive socket
(one ``sendall`` per request, TCP_NODELAY) so the figures are flocid's, not the client's.

1. ``http warm``: warm invoke of a no-op Python 3.13 handler (zip) through the HTTP API, p50/p99;
   boto3 for reference; the same raw client with TCP_NODELAY off, and with headers and body sent in
   two writes without TCP_NODELAY (what a naive client does); how flocid writes an Invoke response
   (strace of the serve process: one ``sendto`` or headers then body) and whether its accepted
   socket has TCP_NODELAY (read with pidfd_getfd).
2. ``hand-off``: the same image in a ``docker create/cp/start`` container fed directly, no HTTP API,
   invoke service or pool: (a) flocid's ``RuntimeApiServer`` on the bridge gateway, (b) a blocking
   raw-socket Runtime API server (the floor). ``flocid overhead`` = http p50 - hand-off p50.
3. ``throughput``: ``--concurrency`` raw clients in threads through the HTTP API, invokes/s, and
   how many warm containers served them.
4. ``cold start``: first invoke of a new function (HTTP round trip) vs a bare ``docker run`` of the
   same image until the runtime's first ``/next`` reaches a listener of ours; interleaved.
5. ``fan-out``: ``--fanout`` parallel invokes of a handler sleeping ``--sleep`` s: containers
   running at once (``docker ps``), handler overlap, successes, flocid RSS before and at peak; then
   SIGTERM and a check that no flocid container is left.

Traffic: loopback and the Docker bridge only; no image is pulled.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flocid.runtime_api.protocol import Invocation  # noqa: E402
from flocid.runtime_api.server import PortAllocator, RuntimeApiServer  # noqa: E402

IMAGE = "flocid.local/lambda/python:3.13"
GATEWAY = "172.17.0.1"
ROLE = "arn:aws:iam::000000000000:role/lambda-role"
NOOP = "def handler(e, c):\n    return None\n"
SLEEPER = (
    "import os, socket, time\n"
    "def handler(e, c):\n"
    "    t0 = time.time()\n"
    "    if e.get('hold'):\n"
    "        with socket.create_connection(tuple(e['hold']), timeout=900) as s:\n"
    "            s.recv(1)\n"
    "    time.sleep(e.get('s', 2.0))\n"
    "    return {'start': t0, 'end': time.time(), 'host': os.uname().nodename}\n"
)
BENCH_LABEL = f"flocid.bench={uuid.uuid4().hex[:12]}"
TRACE = "Root=1-00000000-000000000000000000000000;Sampled=0"


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))] * 1000


def summary(name: str, samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    p50, p99 = pct(s, 0.5), pct(s, 0.99)
    mean = statistics.fmean(s) * 1000
    print(f"{name:<34} n={len(s):<5} p50={p50:8.3f} ms  p99={p99:8.3f} ms  mean={mean:8.3f} ms  "
          f"min={s[0] * 1000:7.3f} ms  max={s[-1] * 1000:8.3f} ms", flush=True)
    return p50, p99


SECTIONS = ("latency", "baselines", "throughput", "cold", "fanout")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores; /proc/stat, idle and iowait excluded)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def containers_cpu_seconds(ids: list[str]) -> float:
    """CPU seconds used by these containers (cgroup v1 cpuacct, else v2 cpu.stat); nan if unknown."""
    total = 0.0
    for cid in ids:
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat")
        if v1.exists():
            total += int(v1.read_text()) / 1e9
        elif v2.exists():
            usage = v2.read_text().split("\n", 1)[0].split()
            total += int(usage[1]) / 1e6
        else:
            return float("nan")
    return total


def container_ids(instance: str, function: str) -> list[str]:
    out = docker("ps", "-q", "--no-trunc", "--filter", "label=flocid.managed=1",
                 "--filter", f"label=flocid.instance={instance}", "--filter", f"label=flocid.function={function}")
    return out.stdout.split()


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_zip(source: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("index.py", source)
    return buf.getvalue()


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_containers(instance: str, function: str | None = None) -> int:
    """Running flocid containers of this daemon (of one function when given)."""
    filters = ["--filter", "label=flocid.managed=1", "--filter", f"label=flocid.instance={instance}"]
    if function:
        filters += ["--filter", f"label=flocid.function={function}"]
    return len(docker("ps", "-q", *filters).stdout.split())


# ---------------------------------------------------------------------------------------------
# a lean keep-alive HTTP/1.1 client (blocking socket, one sendall per request)
# ---------------------------------------------------------------------------------------------


class RawClient:
    def __init__(self, host: str, port: int, *, nodelay: bool = True, split: bool = False,
                 timeout: float = 120.0) -> None:
        self.host, self.port, self.split = host, port, split
        self.nodelay, self.timeout = nodelay, timeout
        self.reconnects = 0
        self.buf = bytearray()
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if self.nodelay else 0)
        self.buf.clear()
        return sock

    def close(self) -> None:
        self.sock.close()

    def invoke(self, name: str, body: bytes = b"{}", extra: str = "") -> tuple[int, dict[str, str], bytes]:
        head = (f"POST /2015-03-31/functions/{name}/invocations HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode()
        if self.split:
            self.sock.sendall(head)
            self.sock.sendall(body)
        else:
            self.sock.sendall(head + body)
        return self.read_response()

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            buf += data
            end = buf.find(b"\r\n\r\n")
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0"))
        del buf[: end + 4]
        while len(buf) < length:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            buf += data
        body = bytes(buf[:length])
        del buf[:length]
        if headers.get("connection", "").lower() == "close":
            # hypercorn ends a keep-alive connection after 1000 requests; reconnect like an SDK.
            self.sock.close()
            self.sock = self._connect()
            self.reconnects += 1
        return status, headers, body


def timed_invokes(client: RawClient, name: str, n: int, warmup: int = 100) -> list[float]:
    for _ in range(warmup):
        status, _h, _b = client.invoke(name)
        if status != 200:
            raise RuntimeError(f"invoke {name}: HTTP {status} {_b[:200]!r}")
    out = []
    for _ in range(n):
        t = time.perf_counter()
        status, headers, _b = client.invoke(name)
        out.append(time.perf_counter() - t)
        if status != 200 or "x-amz-function-error" in headers:
            raise RuntimeError(f"invoke {name}: HTTP {status} {headers} {_b[:200]!r}")
    return out


# ---------------------------------------------------------------------------------------------
# flocid as a subprocess
# ---------------------------------------------------------------------------------------------


class Flocid:
    def __init__(self, workdir: Path, region_limit: int, log_level: str = "warning") -> None:
        self.port = free_port()
        self.data_dir = workdir / "data"
        self.instance = str(self.data_dir.resolve())
        self.log_path = workdir / "flocid.log"
        env = dict(os.environ, FLOCI_SERVICES_LAMBDA_REGION_CONCURRENCY_LIMIT=str(region_limit))
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flocid", "serve", "--executor", "docker", "--ecr-base-uri", "flocid.local",
             "--port", str(self.port), "--data-dir", str(self.data_dir), "--log-level", log_level],
            cwd=str(Path(__file__).resolve().parent.parent), env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flocid exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"GET /2015-03-31/functions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"flocid did not come up: {self.log_tail()}")
            time.sleep(0.05)
        import boto3
        from botocore.config import Config

        self.boto = boto3.client(
            "lambda", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 0}, read_timeout=300, max_pool_connections=50),
        )

    def log_tail(self, n: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def create(self, name: str, source: str, timeout: int = 10) -> None:
        self.boto.create_function(FunctionName=name, Runtime="python3.13", Role=ROLE, Handler="index.handler",
                                  Code={"ZipFile": make_zip(source)}, Timeout=timeout, MemorySize=128)

    def rss(self) -> float:
        return vm_rss_mb(self.proc.pid)

    def stop(self, timeout: float = 120) -> tuple[int | None, float]:
        t = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"flocid did not stop within {timeout:.0f} s after SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode, time.monotonic() - t


# ---------------------------------------------------------------------------------------------
# Section 1: how flocid writes an Invoke response
# ---------------------------------------------------------------------------------------------

_SYS_pidfd_open, _SYS_pidfd_getfd = 434, 438


def server_nodelay(pid: int, client: RawClient) -> str:
    """TCP_NODELAY of flocid's end of ``client``'s connection, read through pidfd_getfd."""
    try:
        local_port = client.sock.getsockname()[1]
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            lport = int(parts[1].split(":")[1], 16)
            rport = int(parts[2].split(":")[1], 16)
            if lport == client.port and rport == local_port:
                inode = parts[9]
        if inode is None:
            return "unknown (connection not in /proc/net/tcp)"
        fd = None
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(entry) == f"socket:[{inode}]":
                    fd = int(entry.name)
            except OSError:
                continue
        if fd is None:
            return "unknown (socket not found among the serve process's fds)"
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = libc.syscall(_SYS_pidfd_open, pid, 0)
        if pidfd < 0:
            return f"unknown (pidfd_open: errno {ctypes.get_errno()})"
        try:
            dup = libc.syscall(_SYS_pidfd_getfd, pidfd, fd, 0)
            if dup < 0:
                return f"unknown (pidfd_getfd: errno {ctypes.get_errno()})"
            with socket.socket(fileno=dup) as s:
                return "on" if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) else "OFF"
        finally:
            os.close(pidfd)
    except OSError as exc:
        return f"unknown ({exc})"


def response_writes(pid: int, client: RawClient, name: str, n: int = 10) -> str:
    """strace the serve process during ``n`` invokes; how many writes make one Invoke response."""
    if shutil.which("strace") is None:
        return "strace not installed"
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-s", "256", "-e", "trace=sendto,sendmsg,write,writev", "-o", out.name,
             "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attach to every thread
        for _ in range(n):
            client.invoke(name)
        time.sleep(0.2)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=10)
        text = Path(out.name).read_text(errors="replace")
    calls = re.findall(r"^\d+\s+(\w+)\((\d+), \"((?:[^\"\\]|\\.)*)\"", text, re.M)
    fd_of_api = {fd for _c, fd, data in calls if "x-amz-executed-version" in data.lower()}
    api_calls = [(c, fd, data) for c, fd, data in calls if fd in fd_of_api]
    heads = [d for _c, _f, d in api_calls if d.startswith("HTTP/1.1 200")]
    if not heads:
        return f"could not find the Invoke responses in the strace output ({len(calls)} calls traced)"
    one = sum(1 for d in heads if d.endswith("null"))
    kinds = sorted({c for c, _f, _d in api_calls})
    return (f"{len(api_calls)} {'/'.join(kinds)} calls on the API socket for {n} invokes: {len(heads)} "
            f"response heads, {one} with the body in the same call "
            f"({'ONE segment' if one == len(heads) == len(api_calls) else 'headers and body written separately'})")


# ---------------------------------------------------------------------------------------------
# Section 2: hand-off baselines (no flocid API, service or pool)
# ---------------------------------------------------------------------------------------------


def start_container(code_dir: Path, runtime_api: str, name: str) -> str:
    """``docker create`` + ``docker cp`` of the code + ``docker start``, as flocid does (no flocid)."""
    created = docker(
        "create", "--init", "--memory", "128m", "--memory-swap", "128m", "--label", BENCH_LABEL,
        "-e", f"AWS_LAMBDA_RUNTIME_API={runtime_api}", "-e", f"AWS_LAMBDA_FUNCTION_NAME={name}",
        "-e", "AWS_LAMBDA_FUNCTION_VERSION=$LATEST", "-e", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128",
        "-e", f"AWS_LAMBDA_LOG_GROUP_NAME=/aws/lambda/{name}", "-e", "AWS_LAMBDA_LOG_STREAM_NAME=bench",
        "-e", "AWS_REGION=us-east-1", IMAGE, "index.handler",
    )
    if created.returncode != 0:
        raise RuntimeError(f"docker create: {created.stderr.strip()}")
    cid = created.stdout.strip()
    for step in (("cp", f"{code_dir}/.", f"{cid}:/var/task"), ("start", cid)):
        r = docker(*step)
        if r.returncode != 0:
            docker("rm", "-f", cid)
            raise RuntimeError(f"docker {step[0]}: {r.stderr.strip()}")
    return cid


async def handoff_trio(code_dir: Path, n: int) -> list[float]:
    listener, port = await PortAllocator(0, 0).open_listener(GATEWAY)
    server = RuntimeApiServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listener)
        cid = await trio.to_thread.run_sync(start_container, code_dir, f"{GATEWAY}:{port}", "handoff")
        try:
            with trio.fail_after(60):
                await server.init_done.wait()

            async def once() -> float:
                done = trio.Event()
                inv = Invocation(request_id=str(uuid.uuid4()), payload=b"{}", function_arn="arn:x",
                                 timeout_ms=30000, trace_id=TRACE, on_complete=done.set)
                t = time.perf_counter()
                server.submit(inv)
                await done.wait()
                return time.perf_counter() - t

            for _ in range(200):
                await once()
            return [await once() for _ in range(n)]
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(docker, "rm", "-f", cid)
            nursery.cancel_scope.cancel()


class _RawRuntimeServer:
    """A blocking Runtime API server for one runtime: the least any server can cost."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.conn: socket.socket | None = None
        self.buf = bytearray()

    def read_request(self) -> tuple[str, bytes]:
        while True:
            if self.conn is None:
                self.conn, _ = self.listener.accept()
                self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.buf.clear()
            end = self.buf.find(b"\r\n\r\n")
            while end < 0:
                data = self.conn.recv(65536)
                if not data:
                    break
                self.buf += data
                end = self.buf.find(b"\r\n\r\n")
            if end < 0:  # the runtime closed this connection; it will open another
                self.conn.close()
                self.conn = None
                continue
            head = bytes(self.buf[:end]).decode("latin-1")
            m = re.search(r"(?im)^content-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            del self.buf[: end + 4]
            while len(self.buf) < length:
                data = self.conn.recv(65536)
                if not data:
                    raise ConnectionError("runtime closed mid-request")
                self.buf += data
            body = bytes(self.buf[:length])
            del self.buf[:length]
            return head.split("\r\n", 1)[0], body

    def send(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)


def handoff_raw(code_dir: Path, n: int) -> list[float]:
    with socket.socket() as listener:
        listener.bind((GATEWAY, 0))
        listener.listen(16)
        listener.settimeout(60)
        cid = start_container(code_dir, f"{GATEWAY}:{listener.getsockname()[1]}", "rawhandoff")
        try:
            srv = _RawRuntimeServer(listener)
            line, _ = srv.read_request()
            assert "/invocation/next" in line, line
            samples = []
            for i in range(200 + n):
                rid = f"req-{i}"
                deadline = int(time.time() * 1000) + 30000
                event = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: {rid}"
                         f"\r\nLambda-Runtime-Deadline-Ms: {deadline}\r\nLambda-Runtime-Invoked-Function-Arn: arn:x"
                         f"\r\nLambda-Runtime-Trace-Id: {TRACE}\r\nContent-Length: 2\r\n\r\n{{}}").encode()
                t = time.perf_counter()
                srv.send(event)
                line, _ = srv.read_request()
                elapsed = time.perf_counter() - t
                assert f"/invocation/{rid}/response" in line, line
                srv.send(b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n"
                         b'{"status":"OK"}\n')
                line, _ = srv.read_request()
                assert "/invocation/next" in line, line
                if i >= 200:
                    samples.append(elapsed)
            return samples
        finally:
            docker("rm", "-f", cid)


# ---------------------------------------------------------------------------------------------
# Section 4: cold start baseline
# ---------------------------------------------------------------------------------------------


def bare_docker_run(code_dir: Path) -> float:
    """``docker run`` until the runtime's first ``/next`` arrives at our listener (seconds)."""
    with socket.socket() as listener:
        listener.bind((GATEWAY, 0))
        listener.listen(4)
        listener.settimeout(60)
        port = listener.getsockname()[1]
        t = time.perf_counter()
        run = docker("run", "-d", "--rm", "--init", "--memory", "128m", "--memory-swap", "128m",
                     "--label", BENCH_LABEL, "-v", f"{code_dir}:/var/task:ro",
                     "-e", f"AWS_LAMBDA_RUNTIME_API={GATEWAY}:{port}", "-e", "AWS_LAMBDA_FUNCTION_NAME=bare",
                     "-e", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128", "-e", "AWS_REGION=us-east-1",
                     IMAGE, "index.handler")
        if run.returncode != 0:
            raise RuntimeError(f"docker run: {run.stderr.strip()}")
        try:
            conn, _ = listener.accept()
            with conn:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(4096)
                    if not data:
                        raise ConnectionError("runtime closed before /next")
                    buf += data
                elapsed = time.perf_counter() - t
                assert b"/invocation/next" in buf, buf[:200]
        finally:
            docker("rm", "-f", run.stdout.strip())
        return elapsed


# ---------------------------------------------------------------------------------------------
# Section 5: fan-out
# ---------------------------------------------------------------------------------------------


class Sampler(threading.Thread):
    def __init__(self, period: float, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.period, self.fn = period, fn
        self.values: list[Any] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.values.append(self.fn())
            except (OSError, subprocess.SubprocessError, ValueError):
                pass
            self.stopping.wait(self.period)

    def stop(self) -> list[Any]:
        self.stopping.set()
        self.join()
        return self.values


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


class HoldGate:
    """A listener on the bridge gateway: each held handler connects and blocks until released."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.listener = socket.socket()
        self.listener.bind((GATEWAY, 0))
        self.listener.listen(k + 16)
        self.listener.settimeout(0.5)
        self.port = int(self.listener.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.all_in = threading.Event()
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closing.is_set() and len(self.conns) < self.k:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)
        if len(self.conns) >= self.k:
            self.all_in.set()

    def release(self) -> None:
        self.closing.set()
        self.thread.join()
        for conn in self.conns:
            try:
                conn.sendall(b"x")
                conn.close()
            except OSError:
                pass
        self.listener.close()


def fanout(fl: Flocid, name: str, k: int, sleep_s: float, hold_timeout: float | None) -> None:
    """``k`` parallel invokes of ``name``. With ``hold_timeout`` every handler blocks on a
    ``HoldGate`` until all ``k`` are inside (or the timeout passes), then sleeps ``sleep_s``."""
    rss_before = fl.rss()
    containers_before = count_containers(fl.instance)
    gate = HoldGate(k) if hold_timeout is not None else None
    event: dict[str, Any] = {"s": sleep_s}
    if gate is not None:
        event["hold"] = [GATEWAY, gate.port]
    body = json.dumps(event).encode()
    results: list[Any] = [None] * k
    barrier = threading.Barrier(k + 1)

    def worker(i: int) -> None:
        try:
            client = RawClient("127.0.0.1", fl.port, timeout=600)
        except OSError as exc:
            barrier.wait()
            results[i] = exc
            return
        barrier.wait()
        try:
            t = time.perf_counter()
            status, headers, raw = client.invoke(name, body, "X-Amz-Log-Type: Tail\r\n")
            results[i] = (status, headers, raw, time.perf_counter() - t)
        except (OSError, ValueError) as exc:
            results[i] = exc
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(k)]
    for th in threads:
        th.start()
    docker_sampler = Sampler(0.5, lambda: count_containers(fl.instance, name))
    rss_sampler = Sampler(0.1, fl.rss)
    docker_sampler.start()
    rss_sampler.start()
    barrier.wait()
    t0 = time.perf_counter()
    held = ""
    if gate is not None and hold_timeout is not None:
        reached = gate.all_in.wait(hold_timeout)
        ramp = time.perf_counter() - t0
        running = count_containers(fl.instance, name)
        rss_held = fl.rss()
        held = (f"{len(gate.conns)}/{k} handlers inside at once after {ramp:.1f} s "
                f"({'all in' if reached else 'TIMED OUT'}; {len(gate.conns) / ramp:.1f} cold starts/s); "
                f"docker ps then: {running} running; flocid RSS then {rss_held:.1f} MB")
        gate.release()
    for th in threads:
        th.join(timeout=600)
    wall = time.perf_counter() - t0
    counts = docker_sampler.stop()
    rss = rss_sampler.stop()
    rss_after = fl.rss()
    ok = [r for r in results if isinstance(r, tuple) and r[0] == 200 and "x-amz-function-error" not in r[1]]
    failures: dict[str, int] = {}
    for r in results:
        if isinstance(r, tuple) and r[0] == 200 and "x-amz-function-error" not in r[1]:
            continue
        if isinstance(r, tuple):
            tail = base64.b64decode(r[1].get("x-amz-log-result", "")).decode(errors="replace")
            tail = " | ".join(ln for ln in tail.splitlines() if ln and not ln.startswith(("START", "END")))
            key = f"HTTP {r[0]} {r[1].get('x-amz-function-error', '')} {r[2][:160]!r} log: {tail[-160:]!r}"
        else:
            key = repr(r)[:160]
        failures[key] = failures.get(key, 0) + 1
    docs = [json.loads(r[2]) for r in ok]
    intervals = [(d["start"], d["end"]) for d in docs]
    hosts = {d["host"] for d in docs}
    lat = [r[3] for r in ok]
    what = f"held, then {sleep_s:.1f} s" if gate is not None else f"{sleep_s:.1f} s"
    label = "fan-out (held until all in)" if gate is not None else "fan-out"
    print(f"{label:<34} {k} parallel invokes, handler {what}: {len(ok)}/{k} succeeded in {wall:.1f} s wall",
          flush=True)
    if held:
        print(f"{'':<34} {held}")
    if lat:
        print(f"{'':<34} latency p50={pct(lat, 0.5) / 1000:.2f} s  max={max(lat):.2f} s; {len(hosts)} distinct "
              f"containers ran them; max handlers overlapping in time: {max_overlap(intervals)}")
    print(f"{'':<34} {name} containers running at once (docker ps, every 0.5 s): peak "
          f"{max(counts, default=0)}; all flocid containers before: {containers_before}, "
          f"after: {count_containers(fl.instance)}")
    print(f"{'':<34} flocid RSS: before {rss_before:.1f} MB, peak {max(rss, default=float('nan')):.1f} MB, "
          f"after {rss_after:.1f} MB", flush=True)
    for key, count in failures.items():
        print(f"{'':<34} FAILED x{count}: {key}")
    first = next((r for r in results if isinstance(r, tuple) and r not in ok), None)
    if first is not None:
        tail = base64.b64decode(first[1].get("x-amz-log-result", "")).decode(errors="replace")
        print(f"{'':<34} first failure, whole LogResult tail:")
        for ln in tail.splitlines():
            print(f"{'':<36}{ln[:300]}")


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="warm invokes per latency figure")
    parser.add_argument("--boto-n", type=int, default=300, help="warm invokes through boto3")
    parser.add_argument("--nodelay-n", type=int, default=300, help="invokes per TCP_NODELAY variant")
    parser.add_argument("--concurrency", type=int, default=4, help="clients for the throughput figure")
    parser.add_argument("--cold-n", type=int, default=5, help="cold starts (flocid and bare docker run)")
    parser.add_argument("--fanout", type=int, default=200, help="parallel invokes of the sleeping handler")
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds the fan-out handler sleeps")
    parser.add_argument("--hold-timeout", type=float, default=180.0,
                        help="longest wait for all fan-out handlers to be inside at once")
    parser.add_argument("--log-level", default="warning", help="flocid's --log-level (its log: see --keep-log)")
    parser.add_argument("--keep-log", default=None, help="copy flocid's log to this file at the end")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    if not args.only <= set(SECTIONS):
        parser.error(f"--only: unknown section(s) {','.join(sorted(args.only - set(SECTIONS)))}")

    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    dv = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {load}, docker {dv}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flocid-bench-") as tmp:
        work = Path(tmp)
        code = work / "code"
        code.mkdir()
        (code / "index.py").write_text(NOOP)
        code.chmod(0o755)
        (code / "index.py").chmod(0o755)
        fl = Flocid(work, region_limit=max(1000, args.fanout + 100), log_level=args.log_level)
        try:
            run_all(fl, code, args)
        finally:
            rc, took = fl.stop()
            left = docker("ps", "-aq", "--filter", f"label=flocid.instance={fl.instance}").stdout.split()
            print(f"{'shutdown':<34} SIGTERM -> exit {rc} in {took:.1f} s; flocid containers left: {len(left)}")
            if left:
                docker("rm", "-f", *left)
            mine = docker("ps", "-aq", "--filter", f"label={BENCH_LABEL}").stdout.split()
            if mine:
                docker("rm", "-f", *mine)
            if args.keep_log:
                shutil.copyfile(fl.log_path, args.keep_log)
            lines = fl.log_path.read_text(errors="replace").splitlines()
            noted = [ln for ln in lines if " WARNING " in ln or " ERROR " in ln or "Traceback" in ln]
            print(f"{'flocid log':<34} {len(lines)} lines, {len(noted)} WARNING/ERROR/Traceback")
            kinds: dict[str, int] = {}
            for ln in noted:
                kinds[re.sub(r"[0-9a-f]{8,}|\d+", "#", ln.split(" ", 2)[-1])[:160]] = 0
            for kind in list(kinds)[:8]:
                print(f"{'':<34} {kind}")
    print(f"total {time.perf_counter() - t_start:.0f} s")


def latency_variants(fl: Flocid, args: argparse.Namespace) -> None:
    boto = []
    for _ in range(50):
        fl.boto.invoke(FunctionName="noop", Payload=b"{}")["Payload"].read()
    for _ in range(args.boto_n):
        t = time.perf_counter()
        fl.boto.invoke(FunctionName="noop", Payload=b"{}")["Payload"].read()
        boto.append(time.perf_counter() - t)
    summary("http warm (boto3)", boto)
    plain = RawClient("127.0.0.1", fl.port, nodelay=False)
    summary("http warm (raw, no NODELAY)", timed_invokes(plain, "noop", args.nodelay_n))
    split = RawClient("127.0.0.1", fl.port, nodelay=False, split=True)
    summary("http warm (no NODELAY, 2 writes)", timed_invokes(split, "noop", args.nodelay_n))
    print(f"{'api socket TCP_NODELAY (server)':<34} {server_nodelay(fl.proc.pid, plain)}")
    print(f"{'invoke response writes':<34} {response_writes(fl.proc.pid, plain, 'noop')}", flush=True)
    plain.close()
    split.close()


def throughput(fl: Flocid, args: argparse.Namespace) -> None:
    """``--concurrency`` raw clients in threads, and who spent the machine's CPU meanwhile."""
    k = args.concurrency
    before = count_containers(fl.instance, "noop")
    barrier = threading.Barrier(k)
    warm_clients = [RawClient("127.0.0.1", fl.port) for _ in range(k)]

    def warm(c: RawClient) -> None:
        barrier.wait()
        c.invoke("noop")

    ths = [threading.Thread(target=warm, args=(c,)) for c in warm_clients]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    per = max(1, args.n // k)
    lat: list[list[float]] = [[] for _ in range(k)]
    start = threading.Barrier(k + 1)

    def caller(i: int) -> None:
        c = warm_clients[i]
        start.wait()
        for _ in range(per):
            t0 = time.perf_counter()
            status, _h, _b = c.invoke("noop")
            lat[i].append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")

    ths = [threading.Thread(target=caller, args=(i,)) for i in range(k)]
    for th in ths:
        th.start()
    ids = container_ids(fl.instance, "noop")
    cpu0 = cpu_seconds(fl.proc.pid)
    box0, mine0, busy0 = containers_cpu_seconds(ids), cpu_seconds(os.getpid()), machine_busy_seconds()
    start.wait()
    t = time.perf_counter()
    for th in ths:
        th.join()
    elapsed = time.perf_counter() - t
    cpu = cpu_seconds(fl.proc.pid) - cpu0
    box, mine = containers_cpu_seconds(ids) - box0, cpu_seconds(os.getpid()) - mine0
    busy = machine_busy_seconds() - busy0
    after = count_containers(fl.instance, "noop")
    total = per * k
    all_lat = [x for one in lat for x in one]
    print(f"{'http throughput':<34} {k} clients: {total / elapsed:7.0f} invokes/s ({total} in {elapsed:.2f} s; "
          f"per-invoke p50={pct(all_lat, 0.5):.3f} ms p99={pct(all_lat, 0.99):.3f} ms); warm noop containers: "
          f"{after} (were {before} before the {k} parallel warm-up invokes); flocid CPU {cpu / elapsed * 100:.0f}% "
          f"of one core, {cpu / total * 1000:.3f} ms per invoke", flush=True)
    per_ms = 1000 / total
    print(f"{'  CPU per invoke, whole machine':<34} {busy * per_ms:.3f} ms = flocid {cpu * per_ms:.3f} + containers "
          f"{box * per_ms:.3f} + bench clients {mine * per_ms:.3f} + rest (kernel softirq, dockerd...) "
          f"{(busy - cpu - box - mine) * per_ms:.3f}; machine {busy / elapsed * 100:.0f}% busy of "
          f"{os.cpu_count() * 100}%", flush=True)
    for c in warm_clients:
        c.close()


def cold_starts(fl: Flocid, client: RawClient, code: Path, args: argparse.Namespace) -> None:
    """First invoke of new functions vs bare ``docker run`` of the same image, interleaved."""
    names = [f"cold{i}" for i in range(args.cold_n)]
    for name in names:
        fl.create(name, NOOP)
    cold, bare = [], []
    for name in names:
        t = time.perf_counter()
        status, headers, _b = client.invoke(name)
        cold.append(time.perf_counter() - t)
        if status != 200 or "x-amz-function-error" in headers:
            print(f"cold invoke {name}: HTTP {status} {headers}")
        bare.append(bare_docker_run(code))
    print(f"{'cold start flocid (http)':<34} " + " ".join(f"{x * 1000:.0f}" for x in cold) + " ms")
    print(f"{'cold start bare docker run':<34} " + " ".join(f"{x * 1000:.0f}" for x in bare) + " ms")
    cm, bm = statistics.median(cold), statistics.median(bare)
    print(f"{'cold start ratio (median)':<34} {cm * 1000:.0f} / {bm * 1000:.0f} ms = {cm / bm:.2f}x "
          f"(target <= 1.2x)", flush=True)


def run_all(fl: Flocid, code: Path, args: argparse.Namespace) -> None:
    fl.create("noop", NOOP)
    client = RawClient("127.0.0.1", fl.port)
    t = time.perf_counter()
    status, _h, _b = client.invoke("noop")
    print(f"{'http first invoke (cold)':<34} {(time.perf_counter() - t) * 1000:.1f} ms (HTTP {status})", flush=True)

    # 1. warm latency through the HTTP API
    timed_invokes(client, "noop", 0, warmup=200)
    http_p50 = http_p99 = float("nan")
    if "latency" in args.only or "baselines" in args.only:
        cpu0 = cpu_seconds(fl.proc.pid)
        http = timed_invokes(client, "noop", args.n, warmup=0)
        cpu = cpu_seconds(fl.proc.pid) - cpu0
        http_p50, http_p99 = summary("http warm (raw, NODELAY)", http)
        print(f"{'flocid CPU per warm invoke':<34} {cpu / args.n * 1000:.3f} ms (serve process, all threads)")
    if "latency" in args.only:
        latency_variants(fl, args)
    if "baselines" in args.only:
        # 2. hand-off baselines
        ho = trio.run(handoff_trio, code, args.n)
        ho_p50, ho_p99 = summary("hand-off (RuntimeApiServer)", ho)
        raw = handoff_raw(code, args.n)
        raw_p50, raw_p99 = summary("hand-off (raw blocking server)", raw)
        # the HTTP figure again, right after, to see the drift between the two measurements
        http2 = timed_invokes(client, "noop", args.n, warmup=20)
        http2_p50, http2_p99 = summary("http warm again (raw, NODELAY)", http2)
        h50, h99 = min(http_p50, http2_p50), min(http_p99, http2_p99)
        print(f"{'flocid overhead vs RuntimeApiServer':<34} p50 {h50 - ho_p50:+.3f} ms  p99 {h99 - ho_p99:+.3f} ms "
              f"(targets: p50 < 1 ms, p99 < 5 ms)")
        print(f"{'flocid overhead vs raw server':<34} p50 {h50 - raw_p50:+.3f} ms  p99 {h99 - raw_p99:+.3f} ms")
    if "throughput" in args.only:
        throughput(fl, args)
    if "cold" in args.only:
        cold_starts(fl, client, code, args)
    client.close()
    if "fanout" in args.only and args.fanout > 0:
        fl.create("sleeper", SLEEPER, timeout=600)
        fanout(fl, "sleeper", args.fanout, args.sleep, None)
        fl.create("holder", SLEEPER, timeout=600)
        fanout(fl, "holder", args.fanout, args.sleep, args.hold_timeout)


if __name__ == "__main__":
    main()
