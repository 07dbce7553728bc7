"""The root nursery: everything flocid runs hangs off it, started in order, stopped in tiers.

    run_daemon
    └── root nursery
        ├── executor (docker: a trio-asyncio loop hosting aiodocker, held open for the daemon's life)
        ├── companion services (moto in a worker thread), their snapshot while they change and on stop
        ├── S3 code sync (object changed -> reload code, drain $LATEST)
        ├── function logs writer (batched into the embedded CloudWatch Logs)
        ├── invoke service: warm environments (one child nursery each: Runtime API server, exit
        │   watcher, output pump), Event workers, idle reaper
        ├── DNS responder on the Docker bridge (port 53), or on flocid's own address on its Docker
        │   network when it runs in a container; given to function containers as their resolver
        ├── ESM supervisor: one poller per enabled event source mapping
        ├── graceful stop: on SIGTERM, drain ESM batches, requests and invocations (5 s), then cancel
        └── API server: flocid.front, its own HTTP/1.1 loop (hypercorn runs the lifespan and odd
            connections), on 127.0.0.1:<port> (+ where containers connect: the Docker bridge
            gateway, or flocid's address on its network), behind the gateway: Invoke (answered in
            the loop, no ASGI), Lambda API (QuartTrio), function URLs, companion services

Each service follows trio's start protocol, so a port that cannot bind or a data dir that cannot be
written fails ``run_daemon`` before it reports ready. Container teardown is shielded and bounded in
the invoke layer, so cancelling the root leaves no container behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.config import Sockets

from flocid.api.app import create_app
from flocid.api.invoke import InvokeApp
from flocid.config import Settings
from flocid.control import ControlPlane
from flocid.esm.api import register_esm_routes
from flocid.esm.service import EsmService
from flocid.esm.store import EsmStore
from flocid.gateway import Gateway
from flocid.services import create_services_app
from flocid.services.function_logs import FunctionLogs
from flocid.state.codestore import CodeStore
from flocid.state.store import Store, StoreError
from flocid.urls import create_url_app

log = logging.getLogger("flocid")

#: How long a graceful stop (SIGTERM, Ctrl-C) lets requests in flight finish.
SHUTDOWN_GRACE_SECONDS = 5.0


class StartupError(Exception):
    """flocid cannot start; the message is one line for the user."""


@attrs.frozen
class Daemon:
    """What a started daemon hands back to its starter (tests, the CLI)."""

    settings: Settings
    binds: list[str]
    control: ControlPlane
    invoker: Any
    cancel_scope: trio.CancelScope
    shutdown: trio.Event
    esm: Any = None

    @property
    def url(self) -> str:
        return self.binds[0]

    def stop(self) -> None:
        """Graceful stop: refuse new requests, let in-flight ones finish within the grace period
        (``SHUTDOWN_GRACE_SECONDS``), then cancel everything else."""
        self.shutdown.set()

    def kill(self) -> None:
        """Immediate stop: cancel everything now (containers are still removed, bounded)."""
        self.cancel_scope.cancel()


def _check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".flocid-write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"data dir {path} is not writable: {exc.strerror or exc}") from exc


def docker_bridge_ip(ifname: str = "docker0") -> str | None:
    """IPv4 address of the Docker bridge on this host, if there is one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname.encode()[:15]))
            return socket.inet_ntoa(packed[20:24])
    except OSError:
        return None


@contextlib.asynccontextmanager
async def open_executor(settings: Settings) -> AsyncIterator[Any]:
    """The executor the settings ask for, or None when invocation is disabled."""
    kind = settings.executor
    if kind == "none":
        yield None
    elif kind == "process":
        from flocid.executors.process import ProcessExecutor

        yield ProcessExecutor()
    elif kind == "docker":
        from flocid.executors.docker import open_docker_executor

        async with open_docker_executor(settings) as ex:
            yield ex
    else:
        raise StartupError(f"unknown executor {kind!r}: use docker, process or none")


def _hyper_config(binds: list[str]) -> HyperConfig:
    config = HyperConfig()
    config.bind = binds
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 75
    # hypercorn closes a keep-alive connection after this many requests, and that close races the
    # last response's final write (its send_eof runs outside the send lock): the 1000th response on a
    # connection could be lost. SDKs keep connections for thousands of invokes: never close for this.
    config.keep_alive_max_requests = 2**62
    config.graceful_timeout = 2
    config.h11_max_incomplete_size = 64 * 1024
    return config


def open_api_sockets(settings: Settings) -> tuple[Sockets, int]:
    """Bind the API: the configured address, plus the Docker bridge gateway on the same port
    (so containers reach flocid) when listening on loopback. Returns the sockets and the port."""
    config = _hyper_config([f"{settings.host}:{settings.port}"])
    try:
        sockets = config.create_sockets()
    except OSError as exc:
        raise StartupError(_bind_message(config.bind[0], exc)) from exc
    port = int(sockets.insecure_sockets[0].getsockname()[1])
    if settings.listen_docker_bridge and settings.host in ("127.0.0.1", "localhost"):
        bridge = docker_bridge_ip()
        if bridge:
            _also_listen(sockets, bridge, port, "the Docker bridge")
    return sockets, port


def _also_listen(sockets: Sockets, host: str, port: int, where: str) -> None:
    """Add a listening socket on ``host:port`` unless one is there; a failure is logged, not fatal."""
    if any(s.getsockname()[0] == host for s in sockets.insecure_sockets):
        return
    try:
        extra = _hyper_config([f"{host}:{port}"]).create_sockets()
    except OSError as exc:
        # Not an address here (Docker was unreachable at start, so the executor knows no better).
        level = logging.DEBUG if exc.errno == errno.EADDRNOTAVAIL else logging.WARNING
        log.log(level, "cannot listen on %s:%d, %s: %s", host, port, where, exc)
    else:
        sockets.insecure_sockets.extend(extra.insecure_sockets)


def listen_where_containers_connect(sockets: Sockets, settings: Settings, host: str | None) -> None:
    """Also bind the API on ``host`` (the executor's ``bind_host``: the gateway of a configured
    network, or flocid's own address when it runs in a container), so ``AWS_ENDPOINT_URL`` answers
    there; nothing to do when the API listens on every address or already on that one."""
    if (not host or not settings.listen_docker_bridge or host in ("0.0.0.0", "::")
            or settings.host not in ("127.0.0.1", "localhost")):
        return
    _also_listen(sockets, host, settings.port, "where containers connect")


async def serve_api(app: Any, sockets: Sockets, *,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the gateway ``app`` on already-bound sockets until cancelled (flocid.front: its own
    HTTP/1.1 loop, hypercorn for the lifespan and for the connections it hands over)."""
    from flocid.front import serve_front

    config = _hyper_config([])
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
    await serve_front(app, config, sockets, task_status=task_status)


async def _stop_gracefully(shutdown: trio.Event, gateway: Gateway, invoker: Any, esm: Any, root: trio.Nursery) -> None:
    """The shutdown tiers: once asked to stop, give requests and invocations in flight (Event ones
    too) up to the grace period, then cancel everything (the invoke layer's teardown of
    containers is shielded and bounded)."""
    await shutdown.wait()
    _sd_notify(b"STOPPING=1")
    with trio.move_on_after(SHUTDOWN_GRACE_SECONDS) as grace:
        if esm is not None:
            await esm.drain()  # no new batch starts; batches in flight finish
        await gateway.wait_idle()
        if invoker is not None:
            await invoker.wait_until(lambda stats: stats.in_flight == 0)
    if grace.cancelled_caught:
        log.warning("work still in flight after %.0f s; stopping it", SHUTDOWN_GRACE_SECONDS)
    root.cancel_scope.cancel()


def _bind_message(bind: str, exc: OSError) -> str:
    if exc.errno == 98:
        return f"cannot listen on {bind}: the port is already in use (pick another with --port)"
    return f"cannot listen on {bind}: {exc.strerror or exc}"


async def run_daemon(settings: Settings, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
    """Run flocid until cancelled. ``task_status.started`` gets a ``Daemon`` once it serves."""
    _check_data_dir(settings.data_dir)
    # Bind first: a taken port fails here, and the rest is built knowing the real port (port 0).
    sockets, port = open_api_sockets(settings)
    settings = attrs.evolve(settings, port=port)
    try:
        store = await trio.to_thread.run_sync(Store, settings.data_dir / "state.db")
        code = await trio.to_thread.run_sync(CodeStore, settings.code_dir)
    except (StoreError, OSError) as exc:
        raise StartupError(str(exc)) from exc
    control = ControlPlane(settings, store, code)
    if settings.hot_reload_enabled and not settings.hot_reload_allowed_paths:
        log.warning("hot reload is enabled with no FLOCI_SERVICES_LAMBDA_HOT_RELOAD_ALLOWED_PATHS: any host "
                    "directory can be mounted into a function; set the allow-list")
    # Nothing writes code yet: a safe moment to drop zips no version refers to any more.
    removed = await trio.to_thread.run_sync(code.collect, control.referenced_code())
    if removed:
        log.info("removed %d unreferenced code package(s)", removed)
    try:
        with trio.CancelScope() as scope:
            async with open_executor(settings) as executor, trio.open_nursery() as root:
                # Companion services start before the API: on a stop they are cancelled with it and save
                # their snapshot once no request can reach them any more.
                services = create_services_app(settings)
                await root.start(services.serve)
                control.s3 = services
                services.on_s3_object_changed.append(
                    lambda ev: control.s3_object_changed(ev.bucket, ev.key, ev.version))
                await root.start(control.serve_s3_sync)
                function_logs = FunctionLogs(services)
                await root.start(function_logs.serve)
                invoker = None
                if executor is not None:
                    invoker = await _start_invoker(root, settings, executor, control, function_logs)
                if executor is not None:
                    listen_where_containers_connect(sockets, settings, getattr(executor, "bind_host", None))
                    await _start_dns(root, settings, executor)
                # Event source mappings: one poller per enabled mapping, restarted from the store.
                esm_store = await trio.to_thread.run_sync(EsmStore, settings.data_dir / "esm.db")
                esm = EsmService(settings, control, invoker, services, store=esm_store)
                await root.start(esm.serve)
                lambda_app = create_app(control)
                register_esm_routes(lambda_app, esm)
                app = Gateway(lambda_app, invoke_app=InvokeApp(control, invoker),
                              url_app=create_url_app(control, invoker), services_app=services)
                shutdown = trio.Event()
                root.start_soon(_stop_gracefully, shutdown, app, invoker, esm, root)
                binds = await root.start(serve_api, app, sockets)
                log.info("flocid serving the Lambda API on %s (data dir %s)", ", ".join(binds),
                         settings.data_dir)
                _sd_notify(b"READY=1")
                task_status.started(Daemon(settings, binds, control, invoker, scope, shutdown, esm))
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(store.close)


async def _start_dns(root: trio.Nursery, settings: Settings, executor: Any) -> None:
    """The embedded DNS responder on the Docker bridge, given to containers as their resolver, so
    ``*.localhost.floci.io`` (virtual-hosted S3 and the like) reaches flocid from inside them. When
    flocid runs in a container there is no bridge in its namespace: the responder listens on (and
    answers with) flocid's own address on the functions' network, and forwards the rest to its own
    resolv.conf (Docker's 127.0.0.11 on a user-defined network)."""
    bridge = getattr(executor, "self_ip", None) or docker_bridge_ip()
    if settings.dns_port == 0 or bridge is None or not hasattr(executor, "dns_servers"):
        return
    from flocid.dns import serve_dns

    try:
        await root.start(functools.partial(
            serve_dns, settings, host=bridge, port=settings.dns_port, answer_ip=bridge,
        ))
    except OSError as exc:
        log.warning("DNS responder not started on %s:%d (%s); containers use Docker's resolver",
                    bridge, settings.dns_port, exc.strerror or exc)
        return
    executor.dns_servers = [bridge]


async def _start_invoker(root: trio.Nursery, settings: Settings, executor: Any, control: ControlPlane,
                         function_logs: FunctionLogs) -> Any:
    from flocid.executors.base import ExecutorUnavailable
    from flocid.invoke.service import InvokeService

    try:
        await executor.check()
    except ExecutorUnavailable as exc:
        log.warning("%s; invocations will fail until it is reachable", exc)
    invoker = InvokeService(
        settings, executor, code_dir_for=control.code.path,
        reserved_for=control.reserved_for, reserved_total=control.reserved_total, log_sink=function_logs,
    )
    await root.start(invoker.serve)
    control.on_change.append(invoker.drain)
    if hasattr(executor, "ensure_image") and hasattr(executor, "has_image"):
        control.image_source = executor
        control.background = root
        for region, account, name, image in control.pending_images():
            control.settle_image(region, account, name, image)
    return invoker


def _sd_notify(message: bytes) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
