"""``flocid``: the command line. ``flocid serve`` runs the daemon; ``flocid images`` builds runtime images."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from flocid.config import Settings

SERVE_HELP = """\
Run the flocid daemon: the AWS Lambda REST API on http://127.0.0.1:4566, functions in real Docker
containers. Point the AWS CLI or an SDK at it:

    aws --endpoint-url http://localhost:4566 lambda list-functions

Every option can also be set by its FLOCI_* environment variable (shown in brackets); a flag beats
the environment. SIGTERM or Ctrl-C stops the daemon cleanly.
"""


#: Settings with no flag: read from the environment only (listed at the end of ``serve --help``).
ENV_ONLY_HELP = {
    "FLOCI_HOSTNAME": "the name functions and clients use for flocid (AWS_ENDPOINT_URL, queue and "
                      "function URLs)",
    "FLOCI_SERVICES_LAMBDA_DOCKER_NETWORK": "the Docker network functions join (default: the bridge; "
                                            "flocid's own network when it runs in a container)",
    "FLOCI_SERVICES_LAMBDA_DOCKER_HOST_OVERRIDE": "the address containers use to reach flocid",
    "FLOCI_SERVICES_LAMBDA_CONTAINER_NAME_PREFIX": "prefix of container names (default flocid)",
    "FLOCI_SERVICES_LAMBDA_AWS_CONFIG_PATH": "a host ~/.aws mounted read-only into functions instead of "
                                             "credentials in their environment",
    "FLOCI_SERVICES_LAMBDA_POLL_INTERVAL_MS": "how often event source mappings poll an idle source "
                                              "(default 1000)",
    "FLOCI_SERVICES_SNAPSHOT_INTERVAL_MS": "write the companion services' snapshot this long after a "
                                           "change (default 1000; 0: only on a clean stop)",
    "FLOCI_DNS_EXTRA_SUFFIXES": "comma-separated names the DNS responder also answers",
    "FLOCI_DNS_PORT": "port of the DNS responder given to containers (default 53; 0: off)",
    "FLOCI_STORAGE_PERSISTENT_PATH": "Floci's name for FLOCI_DATA_DIR",
}


def _env_only_epilog() -> str:
    width = max(len(k) for k in ENV_ONLY_HELP)
    lines = ["settings read from the environment only:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in ENV_ONLY_HELP.items()]
    return "\n".join(lines)


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="run the daemon (the Lambda API on :4566)", description=SERVE_HELP,
        epilog=_env_only_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; the Docker bridge gateway "
                   "is added when present) [FLOCI_HOST]")
    p.add_argument("--port", type=int, help="port of the API (default 4566; 0 picks a free one) [FLOCI_PORT]")
    p.add_argument("--data-dir", type=Path, help="where state and code live (default ./data) [FLOCI_DATA_DIR]")
    p.add_argument("--code-path", type=Path,
                   help="where function code is stored (default <data-dir>/code) [FLOCI_SERVICES_LAMBDA_CODE_PATH]")
    p.add_argument("--region", dest="default_region",
                   help="region when a request is not signed (default us-east-1) [FLOCI_DEFAULT_REGION]")
    p.add_argument("--account", dest="default_account",
                   help="account id of functions (default 000000000000) [FLOCI_DEFAULT_ACCOUNT_ID]")
    p.add_argument("--executor", choices=["docker", "process", "none"],
                   help="how functions run: docker containers (default), local processes, or not at all "
                   "[FLOCI_SERVICES_LAMBDA_EXECUTOR]")
    p.add_argument("--default-memory-mb", type=int,
                   help="MemorySize when CreateFunction gives none (default 128) "
                   "[FLOCI_SERVICES_LAMBDA_DEFAULT_MEMORY_MB]")
    p.add_argument("--default-timeout-seconds", type=int,
                   help="Timeout when CreateFunction gives none (default 3) "
                   "[FLOCI_SERVICES_LAMBDA_DEFAULT_TIMEOUT_SECONDS]")
    p.add_argument("--region-concurrency-limit", type=int,
                   help="concurrent executions per region (default 1000) "
                   "[FLOCI_SERVICES_LAMBDA_REGION_CONCURRENCY_LIMIT]")
    p.add_argument("--unreserved-concurrency-min", type=int,
                   help="unreserved executions that reservations must leave (default 100) "
                   "[FLOCI_SERVICES_LAMBDA_UNRESERVED_CONCURRENCY_MIN]")
    p.add_argument("--container-idle-timeout-seconds", type=int,
                   help="stop a warm container idle this long (default 300) "
                   "[FLOCI_SERVICES_LAMBDA_CONTAINER_IDLE_TIMEOUT_SECONDS]")
    p.add_argument("--ephemeral", action="store_const", const=True,
                   help="a fresh container for every invoke [FLOCI_SERVICES_LAMBDA_EPHEMERAL]")
    p.add_argument("--hot-reload", dest="hot_reload_enabled", action="store_const", const=True,
                   help="let S3Bucket=hot-reload, S3Key=/host/dir bind-mount a directory as a function's code "
                   "[FLOCI_SERVICES_LAMBDA_HOT_RELOAD_ENABLED]")
    p.add_argument("--hot-reload-allowed-paths", type=lambda v: tuple(x for x in v.split(",") if x),
                   dest="hot_reload_allowed_paths",
                   help="comma-separated directories hot-reload paths must lie in, after resolving symlinks "
                   "(default: any) [FLOCI_SERVICES_LAMBDA_HOT_RELOAD_ALLOWED_PATHS]")
    p.add_argument("--ecr-base-uri",
                   help="registry of the runtime images (default public.ecr.aws; flocid.local for the "
                   "images `flocid images build` makes) [FLOCI_ECR_BASE_URI]")
    p.add_argument("--runtime-api-base-port", type=int,
                   help="first port of the per-container Runtime API servers (default 9200) "
                   "[FLOCI_SERVICES_LAMBDA_RUNTIME_API_BASE_PORT]")
    p.add_argument("--runtime-api-max-port", type=int,
                   help="last port of that range (default 9299) [FLOCI_SERVICES_LAMBDA_RUNTIME_API_MAX_PORT]")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (default info) [FLOCI_LOG_LEVEL]")
    p.set_defaults(func=cmd_serve)


def _settings_from(args: argparse.Namespace) -> Settings:
    names = ("host", "port", "data_dir", "code_path", "default_region", "default_account", "executor",
             "default_memory_mb", "default_timeout_seconds", "region_concurrency_limit",
             "unreserved_concurrency_min", "container_idle_timeout_seconds", "ephemeral",
             "ecr_base_uri", "runtime_api_base_port", "runtime_api_max_port", "log_level",
             "hot_reload_enabled", "hot_reload_allowed_paths")
    return Settings.from_env(**{n: getattr(args, n, None) for n in names})


#: Descriptors flocid wants: each warm environment holds ~5 (its Runtime API listener and
#: connection, Docker's log and wait streams), so 200 environments pass a soft limit of 1024
#: (systemd's default) and accept() would fail with EMFILE.
WANTED_FDS = 65536


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE towards ``WANTED_FDS`` (never above the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = WANTED_FDS if hard == resource.RLIM_INFINITY else min(WANTED_FDS, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as exc:
            logging.getLogger("flocid").warning("cannot raise the open-files limit from %d: %s", soft, exc)
            return
    if want < 4096:
        logging.getLogger("flocid").warning(
            "open files limited to %d: a few hundred warm containers need more (raise the hard limit, "
            "e.g. LimitNOFILE= in the systemd unit)", want)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = _settings_from(args)
    except (ValueError, TypeError) as exc:
        print(f"flocid: bad setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)
    raise_fd_limit()
    from flocid.daemon import SHUTDOWN_GRACE_SECONDS, StartupError, run_daemon

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def daemon_then_leave(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
                await run_daemon(settings, task_status=task_status)
                nursery.cancel_scope.cancel()  # the daemon is down: stop listening for signals

            daemon = await nursery.start(daemon_then_leave)
            log = logging.getLogger("flocid")
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for sig in signals:
                    name = signal.Signals(sig).name
                    if daemon.shutdown.is_set():
                        log.info("%s again: stopping now", name)
                        daemon.kill()
                    else:
                        log.info("%s: stopping (requests in flight get up to %.0f s; signal again to stop now)",
                                 name, SHUTDOWN_GRACE_SECONDS)
                        daemon.stop()

    code = 0
    try:
        trio.run(main)
    except* StartupError as group:
        for leaf in _leaves(group):
            print(f"flocid: {leaf}", file=sys.stderr)
        code = 1
    except* KeyboardInterrupt:
        code = 130
    return code


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flocid",
        description="flocid: a local AWS Lambda service (the Lambda API on :4566, functions in Docker).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve_parser(sub)
    try:
        from flocid.images.cli import register
    except ImportError:  # pragma: no cover - images module missing in a broken install
        pass
    else:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
