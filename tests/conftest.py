"""Shared fixtures: an in-process daemon on port 0, and boto3 clients that talk to it.

boto3 is synchronous, so tests call it through ``trio.to_thread.run_sync`` (the ``aws`` helper),
leaving the trio thread free to serve the very request the client makes.
"""

from __future__ import annotations

import base64
import io
import os
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
import trio

from flocid.config import Settings
from flocid.daemon import Daemon, run_daemon

os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
os.environ.pop("AWS_PROFILE", None)
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = "*"

ROLE = "arn:aws:iam::000000000000:role/lambda-role"


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith("bootstrap") else 0o644) << 16
            zf.writestr(info, content)
    return buf.getvalue()


PY_HANDLER = make_zip({"index.py": "def handler(event, context):\n    return {'ok': True, 'event': event}\n"})


def client(endpoint: str, region: str = "us-east-1", service: str = "lambda") -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=botocore.config.Config(
            retries={"max_attempts": 1}, connect_timeout=5, read_timeout=120,
            parameter_validation=False,
        ),
    )


class Aws:
    """Calls a boto3 client from a worker thread: ``await aws.lambda_.create_function(...)``."""

    def __init__(self, endpoint: str, region: str = "us-east-1") -> None:
        self.endpoint = endpoint
        self.lambda_ = _Async(client(endpoint, region))
        self.raw = self.lambda_.raw

    def for_region(self, region: str) -> Aws:
        return Aws(self.endpoint, region)


class _Async:
    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def __getattr__(self, op: str) -> Callable[..., Any]:
        method = getattr(self.raw, op)

        def run(kwargs: dict[str, Any]) -> Any:
            out = method(**kwargs)
            # Read streaming bodies here, in the worker thread: reading them on the trio thread would
            # block the very event loop that is sending them.
            if isinstance(out, dict) and hasattr(out.get("Payload"), "read"):
                out["Payload"] = io.BytesIO(out["Payload"].read())
            return out

        async def call(**kwargs: Any) -> Any:
            return await trio.to_thread.run_sync(run, kwargs)

        return call


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = dict(
        port=0, data_dir=tmp_path / "data", executor="none", listen_docker_bridge=False,
    )
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
async def daemon(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Daemon]:
    d: Daemon = await nursery.start(run_daemon, settings_for(tmp_path))
    yield d
    d.stop()


@pytest.fixture
def aws(daemon: Daemon) -> Aws:
    return Aws(daemon.url)


async def create_fn(aws: Aws, name: str, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        FunctionName=name, Runtime="python3.13", Role=ROLE, Handler="index.handler",
        Code={"ZipFile": PY_HANDLER},
    )
    args.update(kw)
    result: dict[str, Any] = await aws.lambda_.create_function(**args)
    return result


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
