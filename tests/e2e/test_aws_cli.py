"""The AWS CLI, unchanged, against a real ``flocid serve`` process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PY_HANDLER, ROLE
from tests.e2e.test_durability import Server

AWS = shutil.which("aws") or str(Path(sys.executable).with_name("aws"))




def aws(server: Server, *args: str, ok: bool = True) -> Any:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_PAGER": ""}
    proc = subprocess.run(
        [AWS, "--endpoint-url", f"http://127.0.0.1:{server.port}", "--output", "json", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout) if proc.stdout.strip() else None
    assert proc.returncode != 0
    return proc.stderr


def test_cli_create_get_image_config_and_errors(server: Server, tmp_path: Path) -> None:
    if not Path(AWS).exists():
        pytest.fail(f"the AWS CLI is not installed at {AWS}: pip install awscli (the test extra has it)")
    zpath = tmp_path / "f.zip"
    zpath.write_bytes(PY_HANDLER)
    out = aws(server, "lambda", "create-function", "--function-name", "cli", "--runtime", "python3.13",
              "--role", ROLE, "--handler", "index.handler", "--zip-file", f"fileb://{zpath}")
    assert out["State"] == "Active" and out["FunctionName"] == "cli"
    img = aws(server, "lambda", "create-function", "--function-name", "img", "--package-type", "Image",
              "--code", "ImageUri=000000000000.dkr.ecr.us-east-1.amazonaws.com/fake-repo:latest",
              "--role", ROLE, "--image-config", "WorkingDirectory=/app")
    assert img["ImageConfigResponse"]["ImageConfig"]["WorkingDirectory"] == "/app"
    upd = aws(server, "lambda", "update-function-configuration", "--function-name", "img",
              "--image-config", "WorkingDirectory=/updated")
    assert upd["ImageConfigResponse"]["ImageConfig"]["WorkingDirectory"] == "/updated"
    listed = aws(server, "lambda", "list-functions")
    assert sorted(f["FunctionName"] for f in listed["Functions"]) == ["cli", "img"]
    err = aws(server, "lambda", "get-function", "--function-name", "nope", ok=False)
    assert "ResourceNotFoundException" in err
    assert "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope" in err


def test_cli_invoke_as_in_the_readme(tmp_path: Path) -> None:
    """The user's command from the README, against a daemon that runs functions (process executor)."""
    import base64

    from tests.e2e.test_durability import Server, free_port

    server = Server(tmp_path / "data", free_port(), executor="process")
    server.start()
    try:
        zpath = tmp_path / "f.zip"
        zpath.write_bytes(PY_HANDLER)
        aws(server, "lambda", "create-function", "--function-name", "f", "--runtime", "python3.13",
            "--role", ROLE, "--handler", "index.handler", "--zip-file", f"fileb://{zpath}")
        out_file = tmp_path / "out.json"
        # AWS CLI v2 needs --cli-binary-format for a raw payload; v1 (pip's awscli) sends it raw anyway.
        version = subprocess.run([AWS, "--version"], capture_output=True, text=True).stdout
        v2 = ["--cli-binary-format", "raw-in-base64-out"] if version.startswith("aws-cli/2") else []
        meta = aws(server, "lambda", "invoke", "--function-name", "f", "--payload", '{"a":1}', *v2,
                   "--log-type", "Tail", str(out_file))
        assert meta["StatusCode"] == 200 and meta["ExecutedVersion"] == "$LATEST"
        assert json.loads(out_file.read_text()) == {"ok": True, "event": {"a": 1}}
        assert "REPORT RequestId:" in base64.b64decode(meta["LogResult"]).decode()
    finally:
        server.term()
