"""The executor seam: how an execution environment is started and stopped.

The invoke layer owns the Runtime API server of each environment and decides everything about an
invocation; an executor only turns an ``EnvironmentSpec`` into a running environment whose runtime
client talks to ``spec.runtime_api`` and hands back an ``Environment`` handle.

Implementations: ``docker`` (real containers, aiodocker) and ``process`` (the runtime client as a
local subprocess, for machines without Docker and for fast tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import attrs
import trio

from flocid.lambda_.models import FunctionConfig

#: Where a container sees the host's ~/.aws (FLOCI_SERVICES_LAMBDA_AWS_CONFIG_PATH).
AWS_CONFIG_MOUNT = "/opt/aws-config"


class ExecutorError(Exception):
    """An environment could not be started (image missing, Docker down, bad code...)."""


class ExecutorUnavailable(ExecutorError):
    """The executor's backend (the Docker daemon) cannot be reached. The message names the fix."""


@attrs.frozen(kw_only=True)
class EnvironmentSpec:
    """Everything needed to start one execution environment of one function version."""

    function: FunctionConfig
    #: Extracted code (read-only for the environment); None for image functions.
    code_dir: Path | None
    #: ``host:port`` of this environment's Runtime API, as seen from inside the environment.
    runtime_api: str
    #: The complete environment of the runtime process (AWS's variables + the function's own).
    env: dict[str, str]
    #: Image to run (docker executor); None means "the executor picks from the runtime".
    image: str | None = None
    #: Labels naming the flocid instance, so a restarted daemon can reap orphans.
    labels: dict[str, str] = attrs.field(factory=dict)
    #: Mount ``code_dir`` itself (read-only) at /var/task instead of copying it: hot reload.
    bind_code: bool = False


class Environment(Protocol):
    """A started environment. Its runtime client connects to the spec's Runtime API by itself."""

    @property
    def id(self) -> str: ...

    #: Output of the runtime process, one complete line (without newline) per item.
    @property
    def output(self) -> trio.MemoryReceiveChannel[bytes]: ...

    async def wait_exit(self) -> int:
        """Return the exit status once the environment has ended (for any reason)."""
        ...

    async def memory_peak_mb(self) -> int | None:
        """Peak memory of the environment so far, in MB, or None if unknown."""
        ...

    async def stop(self) -> None:
        """Stop and remove the environment. Idempotent; bounded in time."""
        ...


class Executor(Protocol):
    #: Address the Runtime API servers bind to, and the address environments use to reach them.
    @property
    def bind_host(self) -> str: ...

    @property
    def advertise_host(self) -> str: ...

    async def check(self) -> None:
        """Raise ExecutorUnavailable (message naming the fix) when the backend cannot be used."""
        ...

    async def start(self, spec: EnvironmentSpec) -> Environment:
        """Start an environment; raise ExecutorError with a clear message on failure."""
        ...

    async def reap_orphans(self) -> int:
        """Remove environments left by an earlier flocid instance; return how many."""
        ...
