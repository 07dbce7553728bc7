"""Settings: one frozen record built once from ``FLOCI_*`` variables and command-line flags.

Names follow Floci (``floci.services.lambda.*`` <-> ``FLOCI_SERVICES_LAMBDA_*``); a flag beats the
environment, the environment beats the default. Nothing else in flocid reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

ACCOUNT_RE = r"^\d{12}$"


def _positive(_: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen(kw_only=True)
class Settings:
    """Everything configurable about a flocid daemon."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=4566, validator=_positive)
    #: Also listen on the Docker bridge gateway so containers reach the API (when it exists).
    listen_docker_bridge: bool = True
    data_dir: Path = Path("./data")
    #: Where extracted code lives; default ``<data_dir>/code`` (FLOCI_SERVICES_LAMBDA_CODE_PATH).
    code_path: Path | None = None
    default_region: str = "us-east-1"
    default_account: str = "000000000000"
    default_memory_mb: int = attrs.field(default=128, validator=_positive)
    default_timeout_seconds: int = attrs.field(default=3, validator=_positive)
    region_concurrency_limit: int = attrs.field(default=1000, validator=_positive)
    unreserved_concurrency_min: int = attrs.field(default=100, validator=_positive)
    runtime_api_base_port: int = 9200
    runtime_api_max_port: int = 9299
    container_idle_timeout_seconds: int = 300
    ephemeral: bool = False
    executor: str = "docker"
    docker_host_override: str | None = None
    docker_network: str | None = None
    container_name_prefix: str = "flocid"
    ecr_base_uri: str = "public.ecr.aws"
    hostname: str | None = None
    poll_interval_ms: int = 1000
    #: How often, at most, the companion services' snapshot is written while they change, so a
    #: ``kill -9`` loses at most about this much (FLOCI_SERVICES_SNAPSHOT_INTERVAL_MS; 0 = only on a clean stop).
    services_snapshot_interval_ms: int = attrs.field(default=1000, validator=_positive)
    hot_reload_enabled: bool = False
    hot_reload_allowed_paths: tuple[str, ...] = ()
    #: A host ~/.aws mounted read-only at /opt/aws-config in containers (FLOCI_SERVICES_LAMBDA_AWS_CONFIG_PATH).
    aws_config_path: Path | None = None
    #: flocid's own AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, forwarded to functions.
    host_credentials: tuple[tuple[str, str], ...] = ()
    #: Extra names the embedded DNS responder answers with flocid's address (e.g. localhost.localstack.cloud).
    dns_extra_suffixes: tuple[str, ...] = ()
    #: Port of the embedded DNS responder on the Docker bridge (containers can only use 53; 0 = off).
    dns_port: int = 53
    log_level: str = "info"

    @property
    def code_dir(self) -> Path:
        return self.code_path if self.code_path is not None else self.data_dir / "code"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **flags: Any
    ) -> Settings:
        """Build from ``FLOCI_*`` variables, then apply the flags that are not None."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, conv in _ENV.items():
            for var in _ENV_NAMES[name]:
                raw = env.get(var)
                if raw is not None and raw != "":
                    try:
                        values[name] = conv(raw)
                    except ValueError as exc:
                        raise ValueError(f"{var}={raw!r}: {exc}") from exc
                    break
        creds = tuple((k, env[k]) for k in _CREDENTIAL_VARS if env.get(k))
        if creds and any(k == "AWS_ACCESS_KEY_ID" for k, _ in creds):
            values["host_credentials"] = creds
        values.update({k: v for k, v in flags.items() if v is not None})
        return cls(**values)


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _int(raw: str) -> int:
    return int(raw.strip())


def _paths(raw: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in raw.split(",") if p.strip())


_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_L = "FLOCI_SERVICES_LAMBDA_"
# setting -> (converter); names in priority order below.
_ENV: dict[str, Any] = {
    "host": str,
    "port": _int,
    "data_dir": Path,
    "code_path": Path,
    "default_region": str,
    "default_account": str,
    "default_memory_mb": _int,
    "default_timeout_seconds": _int,
    "region_concurrency_limit": _int,
    "unreserved_concurrency_min": _int,
    "runtime_api_base_port": _int,
    "runtime_api_max_port": _int,
    "container_idle_timeout_seconds": _int,
    "ephemeral": _bool,
    "executor": str,
    "docker_host_override": str,
    "docker_network": str,
    "container_name_prefix": str,
    "ecr_base_uri": str,
    "hostname": str,
    "poll_interval_ms": _int,
    "services_snapshot_interval_ms": _int,
    "hot_reload_enabled": _bool,
    "hot_reload_allowed_paths": _paths,
    "dns_extra_suffixes": _paths,
    "aws_config_path": Path,
    "dns_port": _int,
    "log_level": str,
}
_ENV_NAMES: dict[str, tuple[str, ...]] = {
    "host": ("FLOCI_HOST",),
    "port": ("FLOCI_PORT",),
    "data_dir": ("FLOCI_DATA_DIR", "FLOCI_STORAGE_PERSISTENT_PATH"),
    "code_path": (_L + "CODE_PATH",),
    "default_region": ("FLOCI_DEFAULT_REGION",),
    "default_account": ("FLOCI_DEFAULT_ACCOUNT_ID",),
    "default_memory_mb": (_L + "DEFAULT_MEMORY_MB",),
    "default_timeout_seconds": (_L + "DEFAULT_TIMEOUT_SECONDS",),
    "region_concurrency_limit": (_L + "REGION_CONCURRENCY_LIMIT",),
    "unreserved_concurrency_min": (_L + "UNRESERVED_CONCURRENCY_MIN",),
    "runtime_api_base_port": (_L + "RUNTIME_API_BASE_PORT",),
    "runtime_api_max_port": (_L + "RUNTIME_API_MAX_PORT",),
    "container_idle_timeout_seconds": (_L + "CONTAINER_IDLE_TIMEOUT_SECONDS",),
    "ephemeral": (_L + "EPHEMERAL",),
    "executor": (_L + "EXECUTOR",),
    "docker_host_override": (_L + "DOCKER_HOST_OVERRIDE",),
    "docker_network": (_L + "DOCKER_NETWORK",),
    "container_name_prefix": (_L + "CONTAINER_NAME_PREFIX",),
    "ecr_base_uri": ("FLOCI_ECR_BASE_URI",),
    "hostname": ("FLOCI_HOSTNAME",),
    "poll_interval_ms": (_L + "POLL_INTERVAL_MS",),
    "services_snapshot_interval_ms": ("FLOCI_SERVICES_SNAPSHOT_INTERVAL_MS",),
    "hot_reload_enabled": (_L + "HOT_RELOAD_ENABLED",),
    "hot_reload_allowed_paths": (_L + "HOT_RELOAD_ALLOWED_PATHS",),
    "dns_extra_suffixes": ("FLOCI_DNS_EXTRA_SUFFIXES",),
    "aws_config_path": (_L + "AWS_CONFIG_PATH",),
    "dns_port": ("FLOCI_DNS_PORT",),
    "log_level": ("FLOCI_LOG_LEVEL",),
}
