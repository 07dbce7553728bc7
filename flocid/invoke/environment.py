"""One warm execution environment as the invoke service sees it, and what the runtime is given.

A ``WarmEnvironment`` ties together the executor's handle (the running container or process), the
environment's Runtime API server and port, and the bookkeeping the pool and the tail log need.
Its tasks (Runtime API server, exit watcher, output pump) live in one child nursery of the invoke
service; cancelling ``cancel_scope`` retires it (the service stops the handle, shielded and bounded).
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Mapping

import attrs
import trio

from flocid.config import Settings
from flocid.executors.base import AWS_CONFIG_MOUNT, Environment
from flocid.lambda_.models import FunctionConfig
from flocid.runtime_api.server import RuntimeApiServer

FunctionKey = tuple[str, str, str]


@attrs.define(eq=False)
class WarmEnvironment:
    """Identity-hashed: the pool keeps them in dicts and sets."""

    fn: FunctionConfig
    key: tuple[str, str]
    function: FunctionKey
    epoch: int
    port: int
    server: RuntimeApiServer
    handle: Environment
    #: trio time the environment was started (Init Duration on the first invoke).
    started_at: float
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    alive: bool = True
    busy: bool = False
    invocations: int = 0
    exit_status: int | None = None
    #: The CloudWatch Logs stream of this environment (``AWS_LAMBDA_LOG_STREAM_NAME``).
    log_stream: str = ""
    #: Output lines of the current invocation, when its caller asked for the tail.
    capture: list[bytes] | None = None
    #: Output lines consumed so far, and an event set on the next one (tail settling).
    lines_seen: int = 0
    new_line: trio.Event | None = None

    def retire(self) -> None:
        """Stop this environment (its nursery's cleanup stops the handle). Idempotent, never blocks."""
        self.alive = False
        self.cancel_scope.cancel()


def log_stream_name(version: str, now: _dt.datetime | None = None) -> str:
    """``yyyy/mm/dd/[version]<32 hex>`` as AWS names an environment's log stream."""
    now = now or _dt.datetime.now(_dt.UTC)
    return f"{now:%Y/%m/%d}/[{version}]{uuid.uuid4().hex}"


def runtime_environment(
    settings: Settings,
    fn: FunctionConfig,
    *,
    runtime_api: str,
    endpoint_host: str,
    credentials: Mapping[str, str] | None = None,
    aws_config_dir: str = AWS_CONFIG_MOUNT,
) -> dict[str, str]:
    """The complete environment of the runtime process: AWS's variables, then the function's own.

    Credentials, in order: ``credentials`` when given; a mounted host ``~/.aws``
    (``settings.aws_config_path``, seen at ``aws_config_dir``) with no key variables; flocid's own
    keys; else the placeholders test/test. The function's own variables come last, so its
    ``AWS_ENDPOINT_URL=`` (empty) or ``AWS_ENDPOINT_URL_<SERVICE>`` pass through untouched.
    """
    env = {
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "AWS_LAMBDA_FUNCTION_NAME": fn.name,
        "AWS_LAMBDA_FUNCTION_VERSION": fn.version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_size),
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(fn.timeout),
        "AWS_LAMBDA_LOG_GROUP_NAME": fn.log_group,
        "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name(fn.version),
        "AWS_REGION": fn.region,
        "AWS_DEFAULT_REGION": fn.region,
        "AWS_ENDPOINT_URL": f"http://{endpoint_host}:{settings.port}",
        "LAMBDA_TASK_ROOT": "/var/task",
        "LAMBDA_RUNTIME_DIR": "/var/runtime",
        "TZ": ":UTC",
    }
    if credentials:
        env.update(credentials)
    elif settings.aws_config_path is not None:
        env.update(AWS_SHARED_CREDENTIALS_FILE=f"{aws_config_dir}/credentials",
                   AWS_CONFIG_FILE=f"{aws_config_dir}/config")
    elif settings.host_credentials:
        env.update(dict(settings.host_credentials))
    else:
        env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    if fn.handler:
        env["_HANDLER"] = fn.handler
    if fn.runtime:
        env["AWS_EXECUTION_ENV"] = f"AWS_Lambda_{fn.runtime}"
    env.update(fn.environment)
    return env


def instance_labels(settings: Settings, fn: FunctionConfig) -> dict[str, str]:
    return {
        "flocid.instance": str(settings.data_dir.resolve()),
        "flocid.function-arn": fn.arn,
    }
