"""``flocid images build | list``: the offline Lambda runtime images, from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from flocid.images.build import (
    DEFAULT_CACHE_DIR,
    DEFAULT_SUITE,
    RECIPES,
    BuildOptions,
    ImageBuildError,
    build_images,
    image_summary,
    mirror_from_apt_config,
)

_DESCRIPTION = """\
Local AWS Lambda runtime images for machines that cannot reach a container registry.

Each image is built from Debian packages (mmdebstrap, suite trixie: python3.13, nodejs 20) and
imported with `docker import`. It has the contract of the official AWS Lambda base images:
ENTRYPOINT /lambda-entrypoint.sh, CMD = the handler, /var/runtime/bootstrap runs the real runtime
interface client (awslambdaric for Python, aws-lambda-ric for Node.js, the function's own
bootstrap for provided.*) against $AWS_LAMBDA_RUNTIME_API, code in /var/task.

Images:
""" + "\n".join(f"  {r.name:9} {r.ref:38} runtimes: {', '.join(r.runtimes)}" for r in RECIPES)

_BUILD_EPILOG = """\
Needs root, mmdebstrap and a running Docker engine (scripts/ensure-docker starts one).
The Debian mirror is read from /etc/apt (sources.list.d/*.sources URIs:, or sources.list);
--mirror overrides it. Root filesystems and the built Node.js client are cached in --cache-dir, so
re-importing a removed image takes seconds. Images that exist are skipped unless --force.
Exit status: 0 when every selected image is present afterwards, 1 otherwise."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``images build`` and ``images list`` to flocid's command line."""
    images = subparsers.add_parser(
        "images",
        help="build or list the local (offline) Lambda runtime images",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    images.set_defaults(func=lambda args: _usage(images))
    sub = images.add_subparsers(dest="images_command", metavar="{build,list}")

    build = sub.add_parser(
        "build",
        help="build the images that are missing (all, or those named by --only)",
        description=_DESCRIPTION,
        epilog=_BUILD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument(
        "--only", action="append", default=[], metavar="NAME",
        help="build only this image: a name (python, nodejs, provided), a runtime id "
             "(python3.13) or an image reference; repeatable",
    )
    build.add_argument("--force", action="store_true",
                       help="rebuild even if the image exists, ignoring cached root filesystems "
                            "(runtime clients stay cached: remove --cache-dir to refetch them)")
    build.add_argument("--mirror", metavar="URL",
                       help="Debian mirror to build from (default: the one in /etc/apt)")
    build.add_argument("--suite", default=DEFAULT_SUITE,
                       help=f"Debian suite (default: {DEFAULT_SUITE}; its python3 and nodejs "
                            "must match the image tags)")
    build.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                       help=f"where root filesystems and clients are cached (default: {DEFAULT_CACHE_DIR})")
    build.add_argument("--docker", default="docker", help="the docker CLI to use (default: docker)")
    build.set_defaults(func=run_build)

    listing = sub.add_parser("list", help="show each image, the runtimes it serves and whether it exists")
    listing.add_argument("--docker", default="docker", help="the docker CLI to use (default: docker)")
    listing.set_defaults(func=run_list)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_build(args: argparse.Namespace) -> int:
    opts = BuildOptions(
        suite=args.suite,
        mirror=args.mirror,
        cache_dir=args.cache_dir,
        force=args.force,
        only=tuple(args.only),
        docker=args.docker,
    )

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        results = trio.run(build_images, opts, log)
    except ImageBuildError as exc:
        print(f"flocid images build: {exc}", file=sys.stderr)
        return 1
    for result in results:
        detail = f" ({result.detail})" if result.detail else ""
        print(f"  {result.outcome:8} {result.ref}  {result.seconds:.1f}s{detail}")
    return 0 if all(r.outcome != "failed" for r in results) else 1


def run_list(args: argparse.Namespace) -> int:
    async def main() -> int:
        mirror = mirror_from_apt_config() or "(none found in /etc/apt)"
        print(f"Debian mirror for builds: {mirror}")
        for recipe in RECIPES:
            summary = await image_summary(args.docker, recipe.ref)
            state = summary if summary is not None else "absent"
            print(f"{recipe.name:9} {recipe.ref:38} {', '.join(recipe.runtimes):38} {state}")
        return 0

    return trio.run(main)


def main(argv: list[str] | None = None) -> int:
    """Run ``images`` alone (``python -m flocid.images.cli build``), without flocid's main CLI."""
    parser = argparse.ArgumentParser(prog="flocid")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["images", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
