"""The Docker executor: each execution environment is a real container from a Lambda runtime image.

aiodocker is asyncio-only, so it lives on one trio-asyncio loop (``_aio.py``) opened by
``open_docker_executor``; every public method here is a plain trio function. This module is the only
one in flocid that imports aiodocker or aiohttp.

What a container gets (Floci's launcher, floci-lambda.md 1.4-1.10):

- image: ``<ecr base>/lambda/<lang>:<ver>`` for Zip functions (``image_for_runtime``), ``ImageUri``
  with ``ImageConfig`` (EntryPoint, Command, WorkingDirectory) for Image functions; pulled on first
  use with a progress line;
- ``Cmd = [Handler]`` for Zip functions; the image's ``/lambda-entrypoint.sh`` runs the image's own
  runtime client against ``AWS_LAMBDA_RUNTIME_API`` (in ``spec.env``);
- the code copied into ``/var/task`` (all entries mode 0755, as Floci does) before start, and for
  ``provided*`` runtimes ``bootstrap`` also at ``/var/runtime/bootstrap``; code of 32 MiB or more
  goes on a read-only named volume filled once per code id and shared;
- ``HostConfig.Memory`` = MemorySize MB (swap off, like Lambda), Docker's init as PID 1 (fast
  stops), no published ports;
- labels ``flocid.managed=1`` and ``flocid.instance=<data dir>`` so a restarted daemon reaps the
  containers of its dead predecessor;
- the network and the address to reach flocid at from ``flocid.executors.placement`` (decided in
  ``check()``): the configured network, or flocid's own when it runs in a container, else the bridge.

Output: the container's stdout+stderr (Docker's multiplexed log stream) is cut into complete lines
by the sans-IO ``LogFrameParser`` and sent on the environment's ``output`` channel.

Tasks: the log pump and the exit watcher of each environment run in the executor's own nursery,
opened by ``open_docker_executor`` (the "asyncio bridge" node of the supervision tree); they never
raise, and closing the executor stops every environment still running.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import stat
import tarfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import attrs
import trio

from flocid.config import Settings
from flocid.executors._aio import AioBridge, open_aio_bridge
from flocid.executors.base import (
    AWS_CONFIG_MOUNT,
    EnvironmentSpec,
    ExecutorError,
    ExecutorUnavailable,
)
from flocid.executors.placement import (
    Placement,
    SelfContainer,
    confirms,
    decide_placement,
    self_container_candidates,
    self_container_from_inspect,
)
from flocid.lambda_.models import FunctionConfig

log = logging.getLogger(__name__)

MANAGED_LABEL = "flocid.managed"
INSTANCE_LABEL = "flocid.instance"
#: Default bridge gateway, used until ``check()`` has asked Docker.
DEFAULT_GATEWAY = "172.17.0.1"
#: Bound on every teardown step (stop, remove), so a wedged daemon cannot hang shutdown.
STOP_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 5.0
#: How long a shutdown keeps force-removing containers whose stop did not finish.
SWEEP_TIMEOUT_S = 60.0
OUTPUT_CHANNEL_SIZE = 1024
#: Code at least this big goes on a read-only named volume filled once per code id instead of
#: being copied into every container (Floci's CODE_VOLUME_MIN_BYTES, fix #1673: a 34k-file
#: node_modules took ~95 s per cold start when copied).
CODE_VOLUME_MIN_BYTES = 32 * 1024 * 1024
#: Written last into a code volume: its presence means the fill completed.
CODE_READY_MARKER = ".flocid-code-ready"
#: Longest line sent on ``output``; longer lines are cut (a runaway print must not eat memory).
MAX_LINE_BYTES = 256 * 1024

# ---------------------------------------------------------------------------------------------
# Sans-IO: Docker's multiplexed log stream -> complete lines
# ---------------------------------------------------------------------------------------------

STDIN, STDOUT, STDERR = 0, 1, 2


class LogFrameError(ValueError):
    """The bytes are not a Docker multiplexed stream (bad frame header)."""


@attrs.frozen
class LogLine:
    stream: int
    data: bytes


class LogFrameParser:
    """Turn the bytes of a non-TTY container's log/attach stream into complete lines.

    Each frame is an 8-byte header (stream type: 0 stdin, 1 stdout, 2 stderr; three zero bytes;
    big-endian uint32 payload size) followed by the payload. Frames do not follow line boundaries
    (a long print arrives in several frames, several short prints in one), so each stream keeps
    its own partial line until its newline arrives (Floci #1953). Lines are returned without
    ``\\n`` (and without a ``\\r`` before it).
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._partial: dict[int, bytearray] = {}
        self._max_line = max_line

    def feed(self, data: bytes) -> list[LogLine]:
        """Consume ``data``; return the lines it completed, in stream order."""
        self._buf += data
        out: list[LogLine] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 8:
            stream = buf[pos]
            if stream > STDERR or buf[pos + 1 : pos + 4] != b"\x00\x00\x00":
                raise LogFrameError(f"bad Docker log frame header {bytes(buf[pos : pos + 8])!r}")
            size = int.from_bytes(buf[pos + 4 : pos + 8], "big")
            if len(buf) - pos - 8 < size:
                break
            self._add(stream, buf[pos + 8 : pos + 8 + size], out)
            pos += 8 + size
        del buf[:pos]
        return out

    def close(self) -> list[LogLine]:
        """End of stream: return the unterminated last line of each stream (a torn frame is lost)."""
        out = [LogLine(s, _strip_cr(bytes(p))) for s, p in self._partial.items() if p]
        self._partial.clear()
        self._buf.clear()
        return out

    def _add(self, stream: int, payload: bytearray | bytes, out: list[LogLine]) -> None:
        partial = self._partial.get(stream)
        if partial is None:
            partial = self._partial[stream] = bytearray()
        start = 0
        while True:
            nl = payload.find(b"\n", start)
            if nl < 0:
                break
            if partial:
                partial += payload[start:nl]
                line = bytes(partial)
                partial.clear()
            else:
                line = bytes(payload[start:nl])
            out.extend(LogLine(stream, _strip_cr(chunk)) for chunk in self._cut(line))
            start = nl + 1
        if start < len(payload):
            partial += payload[start:]
            while len(partial) >= self._max_line:
                out.append(LogLine(stream, bytes(partial[: self._max_line])))
                del partial[: self._max_line]

    def _cut(self, line: bytes) -> list[bytes]:
        if len(line) <= self._max_line:
            return [line]
        return [line[i : i + self._max_line] for i in range(0, len(line), self._max_line)]


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


# ---------------------------------------------------------------------------------------------
# Sans-IO: runtime -> image, container config
# ---------------------------------------------------------------------------------------------

_RUNTIME_IMAGES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^java(8\.al2|\d+)$"), "java:{0}"),
    (re.compile(r"^python(\d+\.\d+)$"), "python:{0}"),
    (re.compile(r"^nodejs(\d+)\.x$"), "nodejs:{0}"),
    (re.compile(r"^ruby(\d+\.\d+)$"), "ruby:{0}"),
    (re.compile(r"^dotnet(\d+)$"), "dotnet:{0}"),
    (re.compile(r"^go(1)\.x$"), "go:{0}"),
    (re.compile(r"^provided\.(al2023|al2)$"), "provided:{0}"),
    (re.compile(r"^provided$"), "provided:latest"),
)


def image_for_runtime(runtime: str, ecr_base_uri: str = "public.ecr.aws") -> str:
    """The Lambda base image of a runtime (Floci's ``ImageResolver``, floci-lambda.md 1.6).

    ``python3.13 -> <base>/lambda/python:3.13``, ``nodejs20.x -> nodejs:20``,
    ``provided.al2023 -> provided:al2023``, ``provided -> provided:latest``; a runtime containing
    ``/`` or ``:`` is already an image. Unknown runtimes fail with AWS's message.
    """
    if "/" in runtime or ":" in runtime:
        return runtime
    for pattern, template in _RUNTIME_IMAGES:
        m = pattern.match(runtime)
        if m:
            return f"{ecr_base_uri.rstrip('/')}/lambda/{template.format(*m.groups())}"
    raise ExecutorError(f"The runtime parameter {runtime} is not supported.")


def container_name(prefix: str, function_name: str) -> str:
    """``<prefix>-<function>-<8 hex>`` (Floci's naming)."""
    return f"{prefix}-{function_name}-{secrets.token_hex(4)}"


def container_config(
    spec: EnvironmentSpec,
    *,
    image: str,
    labels: dict[str, str],
    network: str | None,
    extra_hosts: list[str] | None = None,
    init: bool = True,
    code_volume: str | None = None,
    code_bind: str | None = None,
    dns: list[str] | None = None,
    aws_config: str | None = None,
) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for one environment.

    ``init``: run Docker's init (tini) as PID 1. The image entrypoint execs the runtime client,
    and as PID 1 it would ignore SIGTERM, so every stop would wait out the full grace period
    (1.2 s measured here, against 0.15 s with init). Lambda's runtime is not PID 1 either.
    """
    fn = spec.function
    memory = max(fn.memory_size, 6) * 1024 * 1024
    host_config: dict[str, Any] = {
        "Memory": memory,
        # Lambda has no swap: memory+swap == memory.
        "MemorySwap": memory,
        "Init": init,
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
    }
    if network:
        host_config["NetworkMode"] = network
    if dns:
        host_config["Dns"] = dns
    if extra_hosts:
        host_config["ExtraHosts"] = extra_hosts
    if code_volume:
        host_config["Mounts"] = [
            {"Type": "volume", "Source": code_volume, "Target": "/var/task", "ReadOnly": True}
        ]
    if code_bind:
        # Hot reload: the host directory itself, so an edited file is seen by the next invoke.
        host_config["Mounts"] = [{"Type": "bind", "Source": code_bind, "Target": "/var/task", "ReadOnly": True}]
    if aws_config:
        host_config.setdefault("Mounts", []).append(
            {"Type": "bind", "Source": aws_config, "Target": AWS_CONFIG_MOUNT, "ReadOnly": True})
    config: dict[str, Any] = {
        "Image": image,
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "Labels": labels,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "Tty": False,
        "OpenStdin": False,
        "HostConfig": host_config,
    }
    if fn.package_type == "Image":
        ic = fn.image_config
        if ic.get("EntryPoint"):
            config["Entrypoint"] = list(ic["EntryPoint"])
        if ic.get("Command"):
            config["Cmd"] = list(ic["Command"])
        if ic.get("WorkingDirectory"):
            config["WorkingDir"] = ic["WorkingDirectory"]
    elif fn.handler:
        config["Cmd"] = [fn.handler]
    return config


def build_code_tar(code_dir: Path, runtime: str | None, *, include_task: bool = True) -> bytes | None:
    """A tar of ``code_dir`` rooted at ``var/task`` (to extract at ``/``), every entry 0755 root.

    0755 everywhere is Floci's choice: zips often lose the executable bit and Lambda needs read
    (and for ``bootstrap`` execute) access. ``provided*`` runtimes also get ``bootstrap`` at
    ``/var/runtime/bootstrap``, where the AWS base image's entrypoint runs it. With
    ``include_task=False`` (code on a volume) only that extra is packed; None when empty.
    """

    def owner_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if not info.issym() and not info.islnk():
            info.mode = 0o755
        return info

    buf = io.BytesIO()
    members = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if include_task:
            tar.add(code_dir, arcname="var/task", recursive=True, filter=owner_root)
            members += 1
        bootstrap = code_dir / "bootstrap"
        if runtime and runtime.startswith("provided") and bootstrap.is_file():
            tar.add(bootstrap, arcname="var/runtime/bootstrap", filter=owner_root)
            members += 1
    return buf.getvalue() if members else None


def code_size(code_dir: Path) -> int:
    """Total bytes of the regular files under ``code_dir`` (symlinks not followed)."""
    total = 0
    for path in code_dir.rglob("*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def code_volume_name(prefix: str, code_id: str) -> str:
    """``<prefix>-code-<first 20 alphanumerics of the code id>``: one volume per code content,
    shared by every function and version with the same code."""
    key = "".join(ch for ch in code_id if ch.isalnum())[:20].lower()
    return f"{prefix}-code-{key}"


def gateway_of(network: dict[str, Any]) -> str | None:
    """The gateway of a ``docker network inspect`` record: IPAM Config Gateway, else the subnet's
    first address (what dockerd assigns when the config names none, as on this machine's bridge)."""
    configs = (network.get("IPAM") or {}).get("Config") or []
    for cfg in configs:
        gw = cfg.get("Gateway")
        if gw and ":" not in gw:
            return str(gw)
    for cfg in configs:
        subnet = cfg.get("Subnet")
        if subnet and ":" not in subnet:
            net = ipaddress.ip_network(subnet, strict=False)
            return str(net.network_address + 1)
    return None


_LAYER_STATUSES = frozenset(
    {
        "Pulling fs layer",
        "Waiting",
        "Downloading",
        "Verifying Checksum",
        "Download complete",
        "Extracting",
        "Pull complete",
        "Already exists",
    }
)


@attrs.frozen
class PullProgress:
    """Folds the JSON progress records of ``POST /images/create`` into one summary line."""

    image: str
    layers: dict[str, tuple[int, int]] = attrs.field(factory=dict)
    done: set[str] = attrs.field(factory=set)

    def update(self, record: dict[str, Any]) -> None:
        layer = record.get("id")
        status = str(record.get("status", ""))
        if not layer or status not in _LAYER_STATUSES:
            return  # "Pulling from <repo>" (id = the tag), "Digest: ...", "Status: ..."
        if status in ("Pull complete", "Already exists", "Download complete"):
            self.done.add(layer)
        detail = record.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            self.layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        elif layer not in self.layers:
            self.layers[layer] = (0, 0)

    def line(self) -> str:
        cur = sum(c for c, _ in self.layers.values())
        total = sum(t for _, t in self.layers.values())
        mb = f", {cur / 1e6:.1f}/{total / 1e6:.1f} MB" if total else ""
        return f"pulling {self.image}: {len(self.done)}/{len(self.layers)} layers done{mb}"


# ---------------------------------------------------------------------------------------------
# The trio shell
# ---------------------------------------------------------------------------------------------

_DOCKER_ERRORS = (aiodocker.DockerError, aiohttp.ClientError, OSError, ValueError)


class DockerEnvironment:
    """One running container. Implements ``flocid.executors.base.Environment``."""

    def __init__(
        self,
        executor: DockerExecutor,
        container_id: str,
        name: str,
        send: trio.MemorySendChannel[bytes],
        receive: trio.MemoryReceiveChannel[bytes],
    ) -> None:
        self._last_peak: int | None = None
        self._peak_fd: int | None = None
        self._executor = executor
        self._id = container_id
        self.name = name
        self._send = send
        self._output = receive
        self._exited = trio.Event()
        self._exit_status = -1
        self._stopped = False
        self._stop_done = trio.Event()
        self._pump_scope = trio.CancelScope()
        self._watch_scope = trio.CancelScope()

    @property
    def id(self) -> str:
        return self._id

    @property
    def output(self) -> trio.MemoryReceiveChannel[bytes]:
        return self._output

    async def wait_exit(self) -> int:
        await self._exited.wait()
        return self._exit_status

    async def memory_peak_mb(self) -> int | None:
        """Peak memory of the container's cgroup.

        First the cgroup file, when flocid sees the host's cgroup tree (cgroup v1
        ``memory.max_usage_in_bytes``, as on this machine; cgroup v2 ``memory.peak``): a file
        read, well under a millisecond. Else Docker's stats API (``memory_stats.max_usage``,
        cgroup v1 only; tens of ms). None when neither knows.
        """
        # An in-memory cgroupfs file, kept open and re-read from offset 0 (fresh every time): read
        # inline, a thread hop (or an open per read) would cost more than the read.
        peak = self._read_peak()
        if peak:
            self._last_peak = peak
            return _mb(peak)
        if self._last_peak:
            # The container is gone (its cgroup with it): its last reading, not a guess.
            return _mb(self._last_peak)
        ex = self._executor
        try:
            with trio.fail_after(STOP_TIMEOUT_S):
                stats = await ex._bridge.call(
                    ex._docker._query_json,
                    f"containers/{self._id}/stats",
                    params={"stream": "false", "one-shot": "true"},
                )
        except (*_DOCKER_ERRORS, trio.TooSlowError):
            return None
        mem = (stats.get("memory_stats") or {}) if isinstance(stats, dict) else {}
        usage = mem.get("max_usage")
        return _mb(int(usage)) if usage else None

    def _read_peak(self) -> int | None:
        if self._peak_fd is None and not self._stopped:
            self._peak_fd = _open_cgroup_peak(self._id)
        if self._peak_fd is None:
            return None
        try:
            return int(os.pread(self._peak_fd, 64, 0))
        except (OSError, ValueError):  # the cgroup is gone with the container
            self._close_peak()
            return None

    def _close_peak(self) -> None:
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after 1 s, remove; idempotent, shielded and bounded."""
        if self._stopped:
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT_S):
                await self._stop_done.wait()
            return
        self._stopped = True
        ex = self._executor
        try:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(STOP_TIMEOUT_S):
                    try:
                        await ex._bridge.call(
                            ex._docker._query_json,
                            f"containers/{self._id}/stop",
                            method="POST",
                            params={"t": 1},
                        )
                    except _DOCKER_ERRORS as exc:
                        if not _is_status(exc, 304, 404):
                            log.debug("stop %s: %s", self.name, exc)
                with trio.move_on_after(STOP_TIMEOUT_S):
                    await ex._remove(self._id, self.name)
                # The log stream ends by itself once the container is gone; the watcher gets
                # its answer. Give both a moment, then cut them off.
                with trio.move_on_after(1.0):
                    await self._exited.wait()
                self._watch_scope.cancel()
                self._pump_scope.cancel()
        finally:
            self._close_peak()
            ex._environments.discard(self)
            self._stop_done.set()

    # -- tasks run in the executor's nursery ------------------------------------------------

    async def _pump_logs(self) -> None:
        ex = self._executor
        parser = LogFrameParser()
        async with self._send:
            with self._pump_scope:
                try:
                    query = ex._docker._query(
                        f"containers/{self._id}/logs",
                        params={"follow": "1", "stdout": "1", "stderr": "1"},
                        timeout=None,
                    )
                    async with ex._bridge.enter(query) as resp:
                        while True:
                            chunk = await ex._bridge.call(resp.content.readany)
                            if not chunk:
                                break
                            for line in parser.feed(chunk):
                                await self._send.send(line.data)
                    for line in parser.close():
                        await self._send.send(line.data)
                except trio.BrokenResourceError:
                    pass  # nobody listens any more
                except (*_DOCKER_ERRORS, LogFrameError) as exc:
                    if not self._stopped:
                        log.warning("log stream of %s ended: %s", self.name, exc)

    async def _watch_exit(self) -> None:
        ex = self._executor
        try:
            with self._watch_scope:
                try:
                    result = await ex._bridge.call(
                        ex._docker._query_json,
                        f"containers/{self._id}/wait",
                        method="POST",
                        timeout=None,
                    )
                    self._exit_status = int(result.get("StatusCode", -1))
                except _DOCKER_ERRORS as exc:
                    if not self._stopped:
                        log.warning("waiting for %s failed: %s", self.name, exc)
        finally:
            self._exited.set()


class DockerExecutor:
    """Implements ``flocid.executors.base.Executor`` with a Docker daemon. Build it with
    ``open_docker_executor``; call ``check()`` once before using ``bind_host``/``advertise_host``."""

    def __init__(
        self,
        settings: Settings,
        bridge: AioBridge,
        docker: aiodocker.Docker | None,
        docker_error: str | None,
        nursery: trio.Nursery,
        progress: Callable[[str], None],
    ) -> None:
        self._settings = settings
        #: Where containers see the host's ~/.aws (read by the invoke layer).
        self.aws_config_dir = AWS_CONFIG_MOUNT
        #: Resolvers given to containers: the embedded DNS responder once it runs (set by the daemon).
        self.dns_servers: list[str] | None = None
        self._bridge = bridge
        self._docker_or_none = docker
        self._docker_error = docker_error
        self._nursery = nursery
        self._progress = progress
        self._instance = str(settings.data_dir.resolve())
        self._placement = Placement(
            network=settings.docker_network,
            advertise_host=settings.docker_host_override or DEFAULT_GATEWAY,
            bind_host=DEFAULT_GATEWAY,
        )
        self._pull_locks: dict[str, trio.Lock] = {}
        self._use_init = True
        self.code_volume_min_bytes = CODE_VOLUME_MIN_BYTES
        self._code_sizes: dict[Path, int] = {}
        self._volume_locks: dict[str, trio.Lock] = {}
        self._ready_volumes: set[str] = set()
        self._environments: set[DockerEnvironment] = set()

    # -- Executor protocol ------------------------------------------------------------------

    @property
    def bind_host(self) -> str:
        return self._placement.bind_host

    @property
    def advertise_host(self) -> str:
        return self._placement.advertise_host

    @property
    def network(self) -> str | None:
        """The Docker network function containers join (None: Docker's default bridge)."""
        return self._placement.network

    @property
    def self_ip(self) -> str | None:
        """flocid's own address on the functions' network when it runs in a container (the API and
        the DNS responder listen there too); None on the host."""
        return self._placement.self_ip

    @property
    def instance_id(self) -> str:
        """The ``flocid.instance`` label value of this daemon's containers."""
        return self._instance

    @property
    def _docker(self) -> aiodocker.Docker:
        if self._docker_or_none is None:
            raise ExecutorUnavailable(self._unreachable(self._docker_error or "no Docker client"))
        return self._docker_or_none

    async def check(self) -> None:
        """Ping dockerd, then learn the address containers use to reach this host."""
        docker = self._docker
        try:
            with trio.fail_after(PING_TIMEOUT_S):
                await self._bridge.call(docker.version)
        except trio.TooSlowError:
            raise ExecutorUnavailable(self._unreachable(f"no answer in {PING_TIMEOUT_S:.0f} s")) from None
        except _DOCKER_ERRORS as exc:
            raise ExecutorUnavailable(self._unreachable(_reason(exc))) from exc
        await self._resolve_hosts()

    async def start(self, spec: EnvironmentSpec) -> DockerEnvironment:
        fn = spec.function
        image = spec.image or self._image_for(fn)
        if fn.package_type != "Image" and (spec.code_dir is None or not spec.code_dir.is_dir()):
            where = "" if spec.code_dir is None else f" (code directory not found: {spec.code_dir})"
            raise ExecutorError(f"No code location for function {fn.name}{where}")
        labels = {
            **spec.labels,
            MANAGED_LABEL: "1",
            INSTANCE_LABEL: self._instance,
            "flocid.function": fn.name,
            "flocid.version": fn.version,
        }
        extra_hosts = None
        if self.advertise_host == "host.docker.internal":
            extra_hosts = ["host.docker.internal:host-gateway"]
        code_tar: bytes | None = None
        code_volume: str | None = None
        code_bind = str(spec.code_dir) if spec.bind_code and spec.code_dir is not None else None
        if spec.code_dir is not None and fn.package_type != "Image" and code_bind is None:
            code_volume = await self._code_volume(spec.code_dir, fn, image)
            code_tar = await trio.to_thread.run_sync(
                functools.partial(build_code_tar, spec.code_dir, fn.runtime, include_task=code_volume is None)
            )
        name = container_name(self._settings.container_name_prefix, fn.name)
        while True:
            init = self._use_init
            config = container_config(
                spec,
                image=image,
                labels=labels,
                network=self._placement.network,
                extra_hosts=extra_hosts,
                init=init,
                code_volume=code_volume,
                code_bind=code_bind,
                dns=self.dns_servers,
                aws_config=(str(self._settings.aws_config_path.resolve())
                            if self._settings.aws_config_path is not None else None),
            )
            try:
                container_id = await self._create_and_start(config, name, image, code_tar)
                break
            except ExecutorError as exc:
                # A daemon without its init binary (docker-init/tini) fails at start; run the
                # runtime as PID 1 then (stops wait out the grace period).
                cause = _reason(exc.__cause__) if exc.__cause__ else ""
                if init and ("docker-init" in cause or "init binary" in cause):
                    log.warning("Docker cannot run its init binary (%s); containers run without it", exc)
                    self._use_init = False
                    continue
                raise
        send, receive = trio.open_memory_channel[bytes](OUTPUT_CHANNEL_SIZE)
        env = DockerEnvironment(self, container_id, name, send, receive)
        self._environments.add(env)
        self._nursery.start_soon(env._pump_logs, name=f"logs {name}")
        self._nursery.start_soon(env._watch_exit, name=f"wait {name}")
        return env

    async def _create_and_start(
        self, config: dict[str, Any], name: str, image: str, code_tar: bytes | None
    ) -> str:
        container_id = await self._create(config, name, image)
        try:
            if code_tar is not None:
                await self._call(
                    "copy code into",
                    name,
                    self._docker._query_json,
                    f"containers/{container_id}/archive",
                    method="PUT",
                    params={"path": "/"},
                    data=code_tar,
                    headers={"Content-Type": "application/x-tar"},
                )
            await self._call(
                "start", name, self._docker._query_json, f"containers/{container_id}/start", method="POST"
            )
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT_S):
                await self._remove(container_id, name)
            raise
        return container_id

    async def _remove(self, container_id: str, name: str) -> bool:
        """Force-remove a container (and its anonymous volumes); True if it existed."""
        try:
            await self._bridge.call(
                self._docker._query_json,
                f"containers/{container_id}",
                method="DELETE",
                params={"force": "1", "v": "1"},
            )
            return True
        except _DOCKER_ERRORS as exc:
            if not _is_status(exc, 404):
                log.warning("could not remove container %s: %s", name, exc)
            return False

    async def reap_orphans(self, *, everything: bool = False) -> int:
        """Remove every container labelled as managed by this instance (its data dir) that no live
        environment owns: they belong to a predecessor that died without cleaning up. With
        ``everything`` (the last step of a shutdown), live ones too. Returns how many were removed."""
        filters = json.dumps({"label": [f"{MANAGED_LABEL}=1", f"{INSTANCE_LABEL}={self._instance}"]})
        found = await self._call(
            "list",
            "containers",
            self._docker._query_json,
            "containers/json",
            params={"all": "1", "filters": filters},
        )
        live = set() if everything else {env.id for env in self._environments}
        orphans = [(str(item["Id"]), str(item.get("Names"))) for item in found if item["Id"] not in live]
        removed = 0
        limiter = trio.CapacityLimiter(8)

        async def remove(container_id: str, names: str) -> None:
            nonlocal removed
            async with limiter:
                with trio.move_on_after(STOP_TIMEOUT_S):
                    if await self._remove(container_id, names):
                        removed += 1

        async with trio.open_nursery() as nursery:
            for container_id, names in orphans:
                nursery.start_soon(remove, container_id, names)
        if removed and not everything:
            log.info("removed %d orphan container(s) of a previous flocid", removed)
        return removed

    # -- helpers ----------------------------------------------------------------------------

    async def _code_volume(self, code_dir: Path, fn: FunctionConfig, image: str) -> str | None:
        """The read-only code volume for big code (filled on first use), or None to copy."""
        size = self._code_sizes.get(code_dir)
        if size is None:
            size = self._code_sizes[code_dir] = await trio.to_thread.run_sync(code_size, code_dir)
        if size < self.code_volume_min_bytes:
            return None
        code_id = fn.code_id or hashlib.sha256(str(code_dir).encode()).hexdigest()
        name = code_volume_name(self._settings.container_name_prefix, code_id)
        async with self._volume_locks.setdefault(name, trio.Lock()):
            if name not in self._ready_volumes:
                await self._fill_code_volume(name, code_id, code_dir, fn, image)
                self._ready_volumes.add(name)
        return name

    async def _fill_code_volume(
        self, name: str, code_id: str, code_dir: Path, fn: FunctionConfig, image: str
    ) -> None:
        """Create the volume and, unless an earlier fill completed (its marker is there), copy
        the code in through a never-started helper container that mounts it read-write."""
        await self._call(
            "create volume",
            name,
            self._docker._query_json,
            "volumes/create",
            method="POST",
            data={
                "Name": name,
                "Labels": {MANAGED_LABEL: "1", INSTANCE_LABEL: self._instance, "flocid.code-id": code_id},
            },
        )
        helper_name = f"{name}-fill-{secrets.token_hex(4)}"
        config = {
            "Image": image,
            "Cmd": ["fill"],
            "Labels": {MANAGED_LABEL: "1", INSTANCE_LABEL: self._instance},
            "HostConfig": {"Mounts": [{"Type": "volume", "Source": name, "Target": "/var/task"}]},
        }
        helper = await self._create(config, helper_name, image)
        try:
            marker = f"/var/task/{CODE_READY_MARKER}"
            if await self._call("look into volume", name, _path_exists, self._docker, helper, marker):
                return
            self._progress(f"filling code volume {name} for {fn.name} (once per code version)")
            tar = await trio.to_thread.run_sync(build_code_tar, code_dir, None)
            marker_tar = _single_file_tar(f"var/task/{CODE_READY_MARKER}", code_id.encode())
            for data in (tar, marker_tar):
                await self._call(
                    "copy code into volume",
                    name,
                    self._docker._query_json,
                    f"containers/{helper}/archive",
                    method="PUT",
                    params={"path": "/"},
                    data=data,
                    headers={"Content-Type": "application/x-tar"},
                )
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT_S):
                await self._remove(helper, helper_name)

    def _image_for(self, fn: FunctionConfig) -> str:
        if fn.package_type == "Image":
            if not fn.image_uri:
                raise ExecutorError(f"Function {fn.name} has PackageType Image but no ImageUri")
            return fn.image_uri
        if not fn.runtime:
            raise ExecutorError(f"Function {fn.name} has no Runtime")
        return image_for_runtime(fn.runtime, self._settings.ecr_base_uri)

    async def _create(self, config: dict[str, Any], name: str, image: str) -> str:
        """Create the container; on 'no such image' pull it once and try again."""
        for attempt in (1, 2):
            try:
                data = await self._bridge.call(
                    self._docker._query_json,
                    "containers/create",
                    method="POST",
                    params={"name": name},
                    data=config,
                )
                return str(data["Id"])
            except _DOCKER_ERRORS as exc:
                if attempt == 1 and _is_status(exc, 404) and "image" in _reason(exc).lower():
                    await self.ensure_image(image)
                    continue
                if _is_unreachable(exc):
                    raise ExecutorUnavailable(self._unreachable(_reason(exc))) from exc
                raise ExecutorError(
                    f"Could not create container {name} from {image}: {_reason(exc)}"
                ) from exc
        raise AssertionError("unreachable")

    async def has_image(self, image: str) -> bool:
        """Whether ``image`` is present locally (no pull)."""
        try:
            await self._bridge.call(self._docker._query_json, f"images/{image}/json")
        except _DOCKER_ERRORS as exc:
            if _is_status(exc, 404):
                return False
            if _is_unreachable(exc):
                raise ExecutorUnavailable(self._unreachable(_reason(exc))) from exc
            raise ExecutorError(f"Could not inspect image {image}: {_reason(exc)}") from exc
        return True

    async def ensure_image(self, image: str) -> None:
        """Make ``image`` present locally, pulling it (with progress lines) if it is absent."""
        lock = self._pull_locks.setdefault(image, trio.Lock())
        async with lock:
            try:
                await self._bridge.call(self._docker._query_json, f"images/{image}/json")
                return
            except _DOCKER_ERRORS as exc:
                if _is_unreachable(exc):
                    raise ExecutorUnavailable(self._unreachable(_reason(exc))) from exc
                if not _is_status(exc, 404):
                    raise ExecutorError(f"Could not inspect image {image}: {_reason(exc)}") from exc
            await self._pull(image)

    async def _pull(self, image: str) -> None:
        progress = PullProgress(image)
        self._progress(f"image {image} is not present locally; pulling it")
        last = trio.current_time()
        try:
            stream = self._docker.images.pull(image, stream=True, timeout=None)
            async with self._bridge.enter(_aclosing(stream)) as records:
                while True:
                    record = await self._bridge.call(_anext_or_none, records)
                    if record is None:
                        break
                    progress.update(record)
                    now = trio.current_time()
                    if now - last >= 1.0:
                        self._progress(progress.line())
                        last = now
        except _DOCKER_ERRORS as exc:
            base = self._settings.ecr_base_uri
            raise ExecutorError(
                f"Image {image} is not present and could not be pulled ({_reason(exc)}): "
                f"build the local runtime images with `flocid images build` and set "
                f"FLOCI_ECR_BASE_URI=flocid.local, or make {base} reachable"
            ) from exc
        self._progress(progress.line().replace("pulling", "pulled", 1))

    async def _call(self, what: str, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._bridge.call(fn, *args, **kwargs)
        except _DOCKER_ERRORS as exc:
            raise ExecutorError(f"Docker could not {what} {name}: {_reason(exc)}") from exc

    async def _resolve_hosts(self) -> None:
        """Decide the network of function containers and the address they reach flocid at
        (``flocid.executors.placement``), and log which network and why."""
        net_name = self._settings.docker_network or "bridge"
        try:
            net = await self._bridge.call(self._docker._query_json, f"networks/{net_name}")
        except _DOCKER_ERRORS as exc:
            if self._settings.docker_network and _is_status(exc, 404):
                raise ExecutorUnavailable(
                    f"Docker network {net_name} does not exist: create it (docker network create "
                    f"{net_name}) or unset FLOCI_SERVICES_LAMBDA_DOCKER_NETWORK"
                ) from exc
            log.warning(
                "could not inspect Docker network %s (%s); assuming %s", net_name, exc, DEFAULT_GATEWAY
            )
            net = {}
        self._placement = decide_placement(
            configured_network=self._settings.docker_network,
            host_override=self._settings.docker_host_override,
            gateway=gateway_of(net) or DEFAULT_GATEWAY,
            me=await self._find_self(),
            can_bind=_can_bind,
        )
        log.info("%s; they reach flocid at %s", self._placement.reason, self._placement.advertise_host)

    async def _find_self(self) -> SelfContainer | None:
        """flocid's own container, confirmed through dockerd, or None (on the host, or in a
        container this dockerd does not know)."""
        candidates = self_container_candidates(
            _read_proc("/proc/self/mountinfo"), _read_proc("/proc/self/cgroup"), socket.gethostname()
        )
        for candidate in candidates:
            try:
                record = await self._bridge.call(self._docker._query_json, f"containers/{candidate}/json")
            except _DOCKER_ERRORS as exc:
                if not _is_status(exc, 404):
                    log.debug("inspecting container %s: %s", candidate, exc)
                continue
            networks: dict[str, Any] = {}
            for name, att in ((record.get("NetworkSettings") or {}).get("Networks") or {}).items():
                key = (att or {}).get("NetworkID") or name
                try:
                    networks[key] = await self._bridge.call(self._docker._query_json, f"networks/{key}")
                except _DOCKER_ERRORS as exc:
                    log.debug("inspecting network %s: %s", name, exc)
            me = self_container_from_inspect(record, networks)
            if confirms(candidate, me, _can_bind):
                return me
        return None

    def _unreachable(self, reason: str) -> str:
        where = getattr(self._docker_or_none, "_connection_info", None) or "the configured DOCKER_HOST"
        return f"Docker is not reachable at {where}: start dockerd or set DOCKER_HOST ({reason})"

    async def _sweep(self) -> None:
        """The last step of a shutdown: force-remove whatever container of this instance is still
        there (stops cut short by their bound while a busy dockerd took its time), so none is left."""
        with trio.move_on_after(SWEEP_TIMEOUT_S) as bound:
            try:
                removed = await self.reap_orphans(everything=True)
            except ExecutorError as exc:
                log.warning("could not list this flocid's containers at shutdown: %s", exc)
                return
            if removed:
                log.info("removed %d container(s) whose stop had not finished", removed)
        if bound.cancelled_caught:
            log.warning("containers of this flocid may be left after %.0f s of removing them: the next "
                        "start with this data dir removes them", SWEEP_TIMEOUT_S)

    async def _stop_all(self) -> None:
        envs = list(self._environments)
        if not envs:
            return
        async with trio.open_nursery() as nursery:
            for env in envs:
                nursery.start_soon(env.stop)


@asynccontextmanager
async def open_docker_executor(
    settings: Settings,
    *,
    docker_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> AsyncIterator[DockerExecutor]:
    """Open the trio-asyncio loop and the aiodocker client; on exit stop the environments still
    running (shielded, bounded), then close the client and the loop.

    Does not contact dockerd: call ``check()`` (the daemon does, at start). ``docker_url`` beats
    ``DOCKER_HOST`` (aiodocker's own lookup: DOCKER_HOST, Docker contexts, the default socket).
    """
    emit = progress or log.info
    async with open_aio_bridge() as bridge:
        docker: aiodocker.Docker | None = None
        error: str | None = None
        try:
            docker = await bridge.call(_make_docker, docker_url)
        except (ValueError, OSError, AssertionError) as exc:
            error = _reason(exc) or "no Docker host configured"
        try:
            async with trio.open_nursery() as nursery:
                executor = DockerExecutor(settings, bridge, docker, error, nursery, emit)
                try:
                    yield executor
                finally:
                    with trio.CancelScope(shield=True):
                        with trio.move_on_after(STOP_TIMEOUT_S + 5):
                            await executor._stop_all()
                        if docker is not None:
                            await executor._sweep()
                    nursery.cancel_scope.cancel()
        finally:
            if docker is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await bridge.call(docker.close)


async def _make_docker(url: str | None) -> aiodocker.Docker:
    # aiohttp wants to be constructed inside the running asyncio loop.
    docker = aiodocker.Docker(url=url)
    # Every environment holds two requests open for its whole life (logs follow, wait), so
    # aiohttp's default pool of 100 connections would wedge every Docker call at ~50 containers.
    # aiodocker builds the connector itself (from DOCKER_HOST, contexts, TLS), so lift the limit
    # on the one it built.
    if getattr(docker.connector, "_limit", 0):
        docker.connector._limit = 0
    return docker


async def _anext_or_none(it: Any) -> Any:
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return None


@asynccontextmanager
async def _aclosing(agen: Any) -> AsyncIterator[Any]:
    try:
        yield agen
    finally:
        await agen.aclose()


def _is_unreachable(exc: BaseException) -> bool:
    """The Docker daemon could not be reached at all (as opposed to answering with an error)."""
    if isinstance(exc, aiodocker.DockerError):
        return exc.status == 900
    return isinstance(exc, aiohttp.ClientConnectionError | ConnectionError | FileNotFoundError)


def _is_status(exc: BaseException, *statuses: int) -> bool:
    return isinstance(exc, aiodocker.DockerError) and exc.status in statuses


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiodocker.DockerError):
        if exc.status == 900:
            # "Cannot connect to Docker Engine via <url> [<aiohttp's text>]": the OS error at
            # the bottom of the chain says it best ("No such file or directory").
            cause: BaseException | None = exc
            while cause is not None:
                if isinstance(cause, OSError) and cause.strerror:
                    return cause.strerror
                cause = cause.__cause__ or cause.__context__
        return str(exc.message)
    return str(exc) or type(exc).__name__


def _mb(n: int) -> int:
    return (n + 1024 * 1024 - 1) // (1024 * 1024)


def _can_bind(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
        return True
    except OSError as exc:
        if exc.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL):
            log.debug("probing bind on %s: %s", host, exc)
        return False


def _read_proc(path: str) -> str:
    # An in-memory procfs file: read inline.
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _open_cgroup_peak(container_id: str) -> int | None:
    """An open descriptor on the container's peak-memory cgroup file (cgroupfs or systemd driver,
    v1 or v2), or None when this process cannot see it."""
    for path in (
        f"/sys/fs/cgroup/memory/docker/{container_id}/memory.max_usage_in_bytes",
        f"/sys/fs/cgroup/memory/system.slice/docker-{container_id}.scope/memory.max_usage_in_bytes",
        f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.peak",
        f"/sys/fs/cgroup/docker/{container_id}/memory.peak",
    ):
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
    return None


async def _path_exists(docker: aiodocker.Docker, container_id: str, path: str) -> bool:
    """Does ``path`` (a small file) exist in the container or its mounts? (GET, not HEAD: a HEAD
    404 has a JSON content type and no body, which aiodocker fails to parse.)"""
    try:
        async with docker._query(f"containers/{container_id}/archive", params={"path": path}) as resp:
            await resp.read()
            return True
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise


def _single_file_tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
