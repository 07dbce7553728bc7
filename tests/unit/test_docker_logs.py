"""The sans-IO pieces of the Docker executor: log frames -> lines, runtime -> image, create config."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest

from flocid.executors.base import EnvironmentSpec, ExecutorError
from flocid.executors.docker import (
    STDERR,
    STDOUT,
    LogFrameError,
    LogFrameParser,
    LogLine,
    PullProgress,
    build_code_tar,
    code_size,
    code_volume_name,
    container_config,
    container_name,
    gateway_of,
    image_for_runtime,
)
from flocid.lambda_.models import FunctionConfig


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def feed_all(parser: LogFrameParser, data: bytes, step: int | None = None) -> list[LogLine]:
    out: list[LogLine] = []
    if step is None:
        out += parser.feed(data)
    else:
        for i in range(0, len(data), step):
            out += parser.feed(data[i : i + step])
    return out


def test_one_frame_one_line() -> None:
    p = LogFrameParser()
    assert p.feed(frame(STDOUT, b"hello\n")) == [LogLine(STDOUT, b"hello")]
    assert p.close() == []


def test_several_lines_in_one_frame_and_crlf() -> None:
    p = LogFrameParser()
    got = p.feed(frame(STDERR, b"a\nb\r\n\nc\n"))
    assert got == [LogLine(STDERR, b"a"), LogLine(STDERR, b"b"), LogLine(STDERR, b""), LogLine(STDERR, b"c")]


def test_line_split_across_frames_is_reassembled() -> None:
    p = LogFrameParser()
    assert p.feed(frame(STDOUT, b"START Req")) == []
    assert p.feed(frame(STDOUT, b"uestId: 1")) == []
    assert p.feed(frame(STDOUT, b"23\nEND")) == [LogLine(STDOUT, b"START RequestId: 123")]
    assert p.close() == [LogLine(STDOUT, b"END")]


def test_streams_keep_separate_partials() -> None:
    p = LogFrameParser()
    data = frame(STDOUT, b"out-") + frame(STDERR, b"err-") + frame(STDOUT, b"1\n") + frame(STDERR, b"2\n")
    assert p.feed(data) == [LogLine(STDOUT, b"out-1"), LogLine(STDERR, b"err-2")]


def test_header_and_payload_split_at_every_byte() -> None:
    lines = [b"x" * n for n in (0, 1, 7, 8, 9, 300)]
    data = b"".join(frame(STDOUT if i % 2 else STDERR, line + b"\n") for i, line in enumerate(lines))
    for step in (1, 2, 3, 5, 8, 13):
        got = feed_all(LogFrameParser(), data, step)
        assert [line.data for line in got] == lines, step


def test_random_chunking_matches_whole_feed() -> None:
    rnd = random.Random(7)
    text = b"".join(rnd.choice([b"abc", b"\n", b"defgh", b"\r\n", b"\xff"]) for _ in range(2000))
    frames = b""
    i = 0
    while i < len(text):
        n = rnd.randint(1, 50)
        frames += frame(STDOUT, text[i : i + n])
        i += n
    whole = LogFrameParser()
    expect = whole.feed(frames) + whole.close()
    chunked = LogFrameParser()
    got: list[LogLine] = []
    j = 0
    while j < len(frames):
        n = rnd.randint(1, 40)
        got += chunked.feed(frames[j : j + n])
        j += n
    got += chunked.close()
    assert got == expect
    pieces = text.split(b"\n")
    reference = [x[:-1] if x.endswith(b"\r") else x for x in pieces[:-1]] + (
        [pieces[-1]] if pieces[-1] else []
    )
    assert [x.data for x in expect] == reference


def test_long_line_is_cut() -> None:
    p = LogFrameParser(max_line=10)
    got = p.feed(frame(STDOUT, b"0123456789abcdefghij" + b"klm"))
    assert got == [LogLine(STDOUT, b"0123456789"), LogLine(STDOUT, b"abcdefghij")]
    assert p.feed(frame(STDOUT, b"\n")) == [LogLine(STDOUT, b"klm")]
    got = p.feed(frame(STDOUT, b"x" * 25 + b"\n"))
    assert [len(x.data) for x in got] == [10, 10, 5]


def test_bad_header_raises() -> None:
    with pytest.raises(LogFrameError):
        LogFrameParser().feed(b"hello world, not multiplexed\n")
    with pytest.raises(LogFrameError):
        LogFrameParser().feed(bytes([1, 0, 1, 0, 0, 0, 0, 1]) + b"x")


def test_torn_frame_at_end_is_dropped() -> None:
    p = LogFrameParser()
    assert p.feed(frame(STDOUT, b"whole\n") + frame(STDOUT, b"torn\n")[:9]) == [LogLine(STDOUT, b"whole")]
    assert p.close() == []


@pytest.mark.parametrize(
    ("runtime", "image"),
    [
        ("python3.13", "public.ecr.aws/lambda/python:3.13"),
        ("python3.9", "public.ecr.aws/lambda/python:3.9"),
        ("nodejs20.x", "public.ecr.aws/lambda/nodejs:20"),
        ("nodejs24.x", "public.ecr.aws/lambda/nodejs:24"),
        ("java21", "public.ecr.aws/lambda/java:21"),
        ("java8.al2", "public.ecr.aws/lambda/java:8.al2"),
        ("ruby3.3", "public.ecr.aws/lambda/ruby:3.3"),
        ("dotnet8", "public.ecr.aws/lambda/dotnet:8"),
        ("go1.x", "public.ecr.aws/lambda/go:1"),
        ("provided.al2023", "public.ecr.aws/lambda/provided:al2023"),
        ("provided.al2", "public.ecr.aws/lambda/provided:al2"),
        ("provided", "public.ecr.aws/lambda/provided:latest"),
        ("my.registry/img:1", "my.registry/img:1"),
    ],
)
def test_image_for_runtime(runtime: str, image: str) -> None:
    assert image_for_runtime(runtime) == image


def test_image_for_runtime_base_and_unknown() -> None:
    assert image_for_runtime("python3.13", "flocid.local/") == "flocid.local/lambda/python:3.13"
    with pytest.raises(ExecutorError, match="The runtime parameter cobol1 is not supported."):
        image_for_runtime("cobol1")


def _fn(**kw: object) -> FunctionConfig:
    base: dict[str, object] = dict(
        name="f1",
        region="us-east-1",
        account="000000000000",
        role="r",
        runtime="python3.13",
        handler="index.handler",
        memory_size=256,
        revision_id="x",
    )
    base.update(kw)
    return FunctionConfig(**base)  # type: ignore[arg-type]


def test_container_config_zip() -> None:
    spec = EnvironmentSpec(function=_fn(), code_dir=Path("/x"), runtime_api="1.2.3.4:9200", env={"A": "1"})
    cfg = container_config(spec, image="img", labels={"flocid.managed": "1"}, network="net1")
    assert cfg["Cmd"] == ["index.handler"]
    assert cfg["Env"] == ["A=1"]
    assert cfg["HostConfig"]["Memory"] == 256 * 1024 * 1024
    assert cfg["HostConfig"]["NetworkMode"] == "net1"
    assert "PortBindings" not in cfg["HostConfig"] and "ExposedPorts" not in cfg
    assert cfg["Labels"] == {"flocid.managed": "1"}


def test_container_config_image() -> None:
    fn = _fn(
        package_type="Image",
        image_uri="repo/img:1",
        runtime=None,
        handler=None,
        image_config={"EntryPoint": ["/bin/sh", "-c"], "Command": ["echo hi"], "WorkingDirectory": "/w"},
    )
    spec = EnvironmentSpec(function=fn, code_dir=None, runtime_api="h:1", env={})
    cfg = container_config(spec, image="repo/img:1", labels={}, network=None)
    assert cfg["Entrypoint"] == ["/bin/sh", "-c"]
    assert cfg["Cmd"] == ["echo hi"]
    assert cfg["WorkingDir"] == "/w"
    assert "NetworkMode" not in cfg["HostConfig"]


def test_container_name() -> None:
    a, b = container_name("flocid", "fn"), container_name("flocid", "fn")
    assert a.startswith("flocid-fn-") and len(a) == len("flocid-fn-") + 8 and a != b


def test_code_tar(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "index.py").write_text("x")
    (tmp_path / "pkg" / "m.py").write_text("y")
    (tmp_path / "bootstrap").write_text("#!/bin/sh\n")
    (tmp_path / "index.py").chmod(0o600)
    names = {
        m.name: m for m in tarfile.open(fileobj=io.BytesIO(build_code_tar(tmp_path, "python3.13") or b""))
    }
    assert set(names) == {
        "var/task",
        "var/task/index.py",
        "var/task/pkg",
        "var/task/pkg/m.py",
        "var/task/bootstrap",
    }
    assert all(m.mode == 0o755 and m.uid == 0 for m in names.values())
    provided = tarfile.open(fileobj=io.BytesIO(build_code_tar(tmp_path, "provided.al2023") or b""))
    assert "var/runtime/bootstrap" in provided.getnames()


def test_gateway_of() -> None:
    assert (
        gateway_of({"IPAM": {"Config": [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]}})
        == "172.18.0.1"
    )
    assert gateway_of({"IPAM": {"Config": [{"Subnet": "172.17.0.0/16"}]}}) == "172.17.0.1"
    assert (
        gateway_of({"IPAM": {"Config": [{"Subnet": "fd00::/64"}, {"Subnet": "10.9.0.0/24"}]}}) == "10.9.0.1"
    )
    assert gateway_of({}) is None


def test_pull_progress_line() -> None:
    p = PullProgress("img")
    p.update({"status": "Pulling from lambda/python", "id": "3.13"})
    p.update({"status": "Pulling fs layer", "id": "aaa"})
    p.update({"status": "Pulling fs layer", "id": "bbb"})
    p.update(
        {"status": "Downloading", "id": "aaa", "progressDetail": {"current": 500_000, "total": 1_000_000}}
    )
    p.update({"status": "Pull complete", "id": "bbb"})
    assert p.line() == "pulling img: 1/2 layers done, 0.5/1.0 MB"


def test_code_tar_without_task_only_carries_the_bootstrap(tmp_path: Path) -> None:
    (tmp_path / "bootstrap").write_text("#!/bin/sh\n")
    assert build_code_tar(tmp_path, "python3.13", include_task=False) is None
    data = build_code_tar(tmp_path, "provided.al2", include_task=False)
    assert data is not None
    assert tarfile.open(fileobj=io.BytesIO(data)).getnames() == ["var/runtime/bootstrap"]


def test_code_size_and_volume_name(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 23)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert code_size(tmp_path) == 123
    assert code_volume_name("flocid", "AB-cd_" + "e" * 40) == "flocid-code-abcd" + "e" * 16


def test_container_config_code_volume_and_init() -> None:
    spec = EnvironmentSpec(function=_fn(), code_dir=Path("/x"), runtime_api="h:1", env={})
    cfg = container_config(spec, image="img", labels={}, network=None, code_volume="vol1", init=False)
    assert cfg["HostConfig"]["Mounts"] == [
        {"Type": "volume", "Source": "vol1", "Target": "/var/task", "ReadOnly": True}
    ]
    assert cfg["HostConfig"]["Init"] is False
    assert container_config(spec, image="img", labels={}, network=None)["HostConfig"]["Init"] is True
