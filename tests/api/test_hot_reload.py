"""Hot reload via bind mount: S3Bucket=hot-reload, S3Key=/host/dir, checked against the allow-list
after resolving symlinks and ``..``, on path-component boundaries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from flocid.daemon import Daemon, run_daemon
from tests.api.test_functions import expect_error
from tests.conftest import Aws, create_fn, make_zip, settings_for


@pytest.fixture
async def hot(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[Aws, Path]]:
    allowed = tmp_path / "work"
    allowed.mkdir()
    d: Daemon = await nursery.start(run_daemon, settings_for(
        tmp_path, hot_reload_enabled=True, hot_reload_allowed_paths=(str(allowed),)))
    yield Aws(d.url), allowed
    d.stop()


def hot_code(path: Path | str) -> dict[str, str]:
    return {"S3Bucket": "hot-reload", "S3Key": str(path)}


async def test_hot_reload_function_is_created_with_the_emulator_sha(hot: tuple[Aws, Path]) -> None:
    aws, allowed = hot
    app = allowed / "app"
    app.mkdir()
    out = await create_fn(aws, "hr", Code=hot_code(app))
    assert out["CodeSha256"] == "hot-reloading-hash-not-available" and out["CodeSize"] == 0
    # Back to a zip: the link to the directory is gone.
    upd = await aws.lambda_.update_function_code(FunctionName="hr", ZipFile=make_zip({"index.py": "x=1\n"}))
    assert upd["CodeSha256"] != "hot-reloading-hash-not-available" and upd["CodeSize"] > 0


async def test_allow_list_refusals(hot: tuple[Aws, Path], tmp_path: Path) -> None:
    aws, allowed = hot
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    prefix_trick = tmp_path / "workx"
    prefix_trick.mkdir()
    for path, needle in (
        (allowed / "escape", "is not within the allowed paths"),      # symlink pointing out
        (allowed / ".." / "outside", "is not within the allowed paths"),  # .. climbing out
        (prefix_trick, "is not within the allowed paths"),           # /work does not admit /workx
        (allowed / "missing", "does not exist or is not a directory"),
        ("relative/dir", "must be an absolute path"),
    ):
        err = await expect_error(create_fn(aws, "bad", Code=hot_code(path)), 400, "InvalidParameterValueException")
        assert needle in err.response["Error"]["Message"], (path, err.response["Error"]["Message"])
    await expect_error(aws.lambda_.get_function(FunctionName="bad"), 404, "ResourceNotFoundException")


async def test_disabled_hot_reload_is_an_ordinary_bucket(aws: Aws, tmp_path: Path) -> None:
    err = await expect_error(create_fn(aws, "nohr", Code=hot_code(tmp_path)), 400, "InvalidParameterValueException")
    assert "NoSuchBucket" in err.response["Error"]["Message"]
