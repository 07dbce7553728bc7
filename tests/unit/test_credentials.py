"""Credential modes of a function's environment (issue: networks, hostnames, credentials)."""

from __future__ import annotations

from pathlib import Path

from flocid.config import Settings
from flocid.invoke.environment import runtime_environment
from flocid.lambda_.models import FunctionConfig

FN = FunctionConfig(name="f", region="eu-west-1", account="000000000000", role="r", revision_id="x",
                    runtime="python3.13", handler="index.handler")


def env_for(settings: Settings, fn: FunctionConfig = FN) -> dict[str, str]:
    return runtime_environment(settings, fn, runtime_api="172.17.0.1:9200", endpoint_host="172.17.0.1")


def test_placeholders_by_default() -> None:
    env = env_for(Settings.from_env({}))
    assert env["AWS_ACCESS_KEY_ID"] == "test" and env["AWS_SECRET_ACCESS_KEY"] == "test"
    assert "AWS_SHARED_CREDENTIALS_FILE" not in env
    assert env["AWS_ENDPOINT_URL"] == "http://172.17.0.1:4566" and env["AWS_REGION"] == "eu-west-1"


def test_flocids_own_keys_are_forwarded() -> None:
    settings = Settings.from_env({"AWS_ACCESS_KEY_ID": "AKIAHOST", "AWS_SECRET_ACCESS_KEY": "s3cret",
                                  "AWS_SESSION_TOKEN": "tok"})
    env = env_for(settings)
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_SESSION_TOKEN"]) == (
        "AKIAHOST", "s3cret", "tok")


def test_aws_config_path_mounts_and_injects_no_keys(tmp_path: Path) -> None:
    settings = Settings.from_env({"FLOCI_SERVICES_LAMBDA_AWS_CONFIG_PATH": str(tmp_path),
                                  "AWS_ACCESS_KEY_ID": "AKIAHOST", "AWS_SECRET_ACCESS_KEY": "s3cret"})
    env = env_for(settings)
    assert env["AWS_SHARED_CREDENTIALS_FILE"] == "/opt/aws-config/credentials"
    assert env["AWS_CONFIG_FILE"] == "/opt/aws-config/config"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(env)


def test_function_endpoint_overrides_pass_through() -> None:
    import attrs

    fn = attrs.evolve(FN, environment={"AWS_ENDPOINT_URL": "", "AWS_ENDPOINT_URL_S3": "https://s3.example"})
    env = env_for(Settings.from_env({}), fn)
    assert env["AWS_ENDPOINT_URL"] == "" and env["AWS_ENDPOINT_URL_S3"] == "https://s3.example"


def test_hostname_is_the_endpoint() -> None:
    settings = Settings.from_env({"FLOCI_HOSTNAME": "flocid.internal"})
    env = runtime_environment(settings, FN, runtime_api="x:1", endpoint_host=settings.hostname or "x")
    assert env["AWS_ENDPOINT_URL"] == "http://flocid.internal:4566"
