"""The process executor: an execution environment as a local subprocess, no Docker.

Python runtimes run the real runtime interface client (``python -m awslambdaric <handler>``) with the
code directory on ``PYTHONPATH`` and as working directory; ``provided.*`` runs the code's
``bootstrap``. Each environment is its own process group, so ``stop`` kills the runtime and
whatever it spawned. For machines without Docker and for fast tests; no isolation at all.

Output (stdout and stderr merged) is read while ``wait_exit()`` is awaited (the invoke service's exit
watcher does that for the environment's whole life), one line per item on ``output``.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import trio

from flocid.executors.base import EnvironmentSpec, ExecutorError

log = logging.getLogger(__name__)

#: Lines longer than this are split (a runaway print must not eat the daemon's memory).
MAX_LINE = 256 * 1024


class ProcessEnvironment:
    def __init__(self, process: trio.Process, name: str) -> None:
        self._process = process
        self._id = f"{name}-{process.pid}"
        self._send, self._output = trio.open_memory_channel[bytes](1024)
        self._status: int | None = None
        self._exited = trio.Event()
        self._reading = False
        self._drained = trio.Event()
        #: Lines put on ``output`` so far (the invoke service compares with what it consumed).
        self.lines_emitted = 0

    @property
    def id(self) -> str:
        return self._id

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def output(self) -> trio.MemoryReceiveChannel[bytes]:
        return self._output

    async def wait_exit(self) -> int:
        if self._reading:
            await self._exited.wait()
            assert self._status is not None
            return self._status
        self._reading = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_output)
                self._status = await self._process.wait()
                # Children of the runtime may still hold the pipe: do not wait for them long.
                with trio.move_on_after(0.5):
                    await self._drained.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._send.close()
            if self._status is None:
                self._status = self._process.returncode if self._process.returncode is not None else -9
            self._exited.set()
        return self._status

    async def _read_output(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        buf = b""
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    await self._emit(line)
                while len(buf) > MAX_LINE:
                    await self._emit(buf[:MAX_LINE])
                    buf = buf[MAX_LINE:]
            if buf:
                await self._emit(buf)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            self._drained.set()

    async def _emit(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            # Backpressure, not loss: the invoke layer always reads this channel; while it catches
            # up the pipe fills and the runtime waits, as it would on a slow Docker log stream.
            await self._send.send(line)
            self.lines_emitted += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def settle_output(self) -> None:
        """Return once what the process wrote so far has been read from its pipe onto ``output``.

        The runtime prints, then posts its response; the response can be seen first. ``LogType:
        Tail`` calls this so the tail holds the handler's last lines. Bound it with a timeout.
        """
        stream = self._process.stdout
        if stream is None or self._drained.is_set():
            return
        fd = stream.fileno()  # type: ignore[attr-defined]
        while True:
            await trio.lowlevel.checkpoint()
            try:
                poller = select.poll()  # not select(): it fails for descriptors over 1023
                poller.register(fd, select.POLLIN)
                readable = poller.poll(0)
            except (OSError, ValueError):
                return
            if not readable:
                return

    async def memory_peak_mb(self) -> int | None:
        try:
            with open(f"/proc/{self._process.pid}/status", "rb") as f:  # noqa: ASYNC230 - procfs, no disk
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        return max(1, int(line.split()[1]) // 1024)
        except (OSError, ValueError, IndexError):
            return None
        return None

    async def stop(self) -> None:
        if self._process.returncode is None:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except PermissionError:  # pragma: no cover
                self._process.kill()
        with trio.move_on_after(5):
            await self._process.wait()


class ProcessExecutor:
    """Runs environments as local processes on 127.0.0.1."""

    def __init__(self, *, python: str | None = None) -> None:
        self._python = python or sys.executable

    @property
    def bind_host(self) -> str:
        return "127.0.0.1"

    @property
    def advertise_host(self) -> str:
        return "127.0.0.1"

    async def check(self) -> None:
        return None

    async def reap_orphans(self) -> int:
        # Environments are children in their own process groups; a killed daemon leaves runtimes that
        # exit on their own once their Runtime API port is gone (their next request fails).
        return 0

    def command(self, spec: EnvironmentSpec) -> tuple[list[str], dict[str, str], Path]:
        """The argv, environment and working directory for ``spec``."""
        fn = spec.function
        runtime = fn.runtime or ""
        if spec.code_dir is None:
            raise ExecutorError(
                f"the process executor cannot run image functions ({fn.image_uri}); use the docker executor"
            )
        code_dir = Path(spec.code_dir).resolve()
        env = dict(spec.env)
        env["LAMBDA_TASK_ROOT"] = str(code_dir)
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        # Keep the host's Python from writing bytecode into the read-only code dir.
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        if runtime.startswith("python"):
            if not fn.handler:
                raise ExecutorError(f"function {fn.arn} has no handler")
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code_dir), env.get("PYTHONPATH")) if p)
            # awslambdaric 4.x polls /next from a thread for python3.12+ AWS_EXECUTION_ENV values;
            # the host interpreter may be older, so let it pick its default way.
            env.pop("AWS_EXECUTION_ENV", None)
            return [self._python, "-m", "awslambdaric", fn.handler], env, code_dir
        if runtime.startswith("provided"):
            bootstrap = code_dir / "bootstrap"
            if not bootstrap.is_file():
                raise ExecutorError(f"function {fn.arn} has no bootstrap file in its code")
            return [str(bootstrap)], env, code_dir
        raise ExecutorError(f"the process executor cannot run runtime {runtime!r} (python* and provided* only)")

    async def start(self, spec: EnvironmentSpec) -> ProcessEnvironment:
        argv, env, cwd = self.command(spec)
        try:
            process = await trio.lowlevel.open_process(
                argv,
                env=env,
                cwd=str(cwd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ExecutorError(f"cannot start {argv[0]}: {exc}") from exc
        return ProcessEnvironment(process, spec.function.name)
