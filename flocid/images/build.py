"""Build flocid's offline Lambda runtime images from Debian packages.

For machines that cannot reach a container registry (CI among them): ``mmdebstrap`` makes a Debian
root filesystem with the runtime's packages, the real runtime interface client goes into
``/var/runtime`` (``awslambdaric`` wheels from PyPI for Python; ``aws-lambda-ric`` from npm, built
once in a throw-away Debian builder because it has a native part, for Node.js), and
``docker import --change`` turns the tarball into an image with the contract of the official AWS
Lambda base images: ``/lambda-entrypoint.sh`` as ENTRYPOINT, the handler as CMD,
``/var/runtime/bootstrap`` running the runtime client, code in ``/var/task``.

Everything slow is cached under the cache dir (``/var/cache/flocid-images``): the root filesystem
tarball of each image (keyed by its recipe) and the built Node client. Images are built in parallel.

This room touches subprocesses (mmdebstrap, pip, docker) and the cache dir, nothing else of flocid.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path

import attrs
import trio

FILES_DIR = Path(__file__).resolve().parent / "files"
DEFAULT_SUITE = "trixie"
DEFAULT_CACHE_DIR = Path("/var/cache/flocid-images")
#: The real Python runtime interface client (it has a C extension: we fetch the cp313 wheel).
PYTHON_CLIENT_SPECS = ("awslambdaric==4.2.2", "boto3")
#: The real Node.js runtime interface client. 3.x supports node 20 (4.x wants node >= 22).
NODE_CLIENT_SPEC = "aws-lambda-ric@3.3.0"
#: What the Node client's native build needs inside the builder.
NODE_BUILDER_PACKAGES = (
    "build-essential", "cmake", "autoconf", "automake", "libtool", "python3",
    "nodejs", "npm", "libnode-dev", "ca-certificates",
)
#: The builder's package.json: node-gyp 9 (pinned by aws-lambda-ric 3.x) imports distutils, which
#: python3.13 no longer has; node-gyp 10 does not.
_NODE_BUILD_PACKAGE_JSON = json.dumps({"private": True, "overrides": {"node-gyp": "^10.2.0"}})
LABEL_RECIPE = "io.flocid.image.recipe"
LABEL_RUNTIMES = "io.flocid.image.runtimes"

HEARTBEAT_SECONDS = 30.0

Log = Callable[[str], None]


class ImageBuildError(Exception):
    """A build step failed; the message says which and shows the end of its output."""


@attrs.frozen(kw_only=True)
class ImageRecipe:
    """One local runtime image: what goes in it and how it starts."""

    #: Short name used by ``--only`` and in progress lines.
    name: str
    #: The image reference flocid runs.
    ref: str
    #: The Lambda runtime identifiers this image serves.
    runtimes: tuple[str, ...]
    #: Debian packages on top of ``--variant=minbase``.
    packages: tuple[str, ...]
    #: ``(file in flocid/images/files, absolute path in the image)``.
    files: tuple[tuple[str, str], ...]
    #: The runtime client to put in ``/var/runtime``: "python", "nodejs" or "" (custom runtimes).
    client: str = ""
    #: Default CMD (the handler), as the ``Handler`` of a new function in the AWS console.
    cmd: str
    env: tuple[tuple[str, str], ...] = ()


_COMMON_ENV = (
    ("LANG", "C.UTF-8"),
    ("TZ", ":/etc/localtime"),
    ("PATH", "/var/lang/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/bin"),
    (
        "LD_LIBRARY_PATH",
        "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib",
    ),
    ("LAMBDA_TASK_ROOT", "/var/task"),
    ("LAMBDA_RUNTIME_DIR", "/var/runtime"),
)
_ENTRYPOINT = ("lambda-entrypoint.sh", "/lambda-entrypoint.sh")

RECIPES: tuple[ImageRecipe, ...] = (
    ImageRecipe(
        name="python",
        ref="flocid.local/lambda/python:3.13",
        runtimes=("python3.13",),
        packages=("python3", "ca-certificates"),
        files=(_ENTRYPOINT, ("python-bootstrap", "/var/runtime/bootstrap")),
        client="python",
        cmd="lambda_function.lambda_handler",
        env=_COMMON_ENV,
    ),
    ImageRecipe(
        name="nodejs",
        ref="flocid.local/lambda/nodejs:20",
        runtimes=("nodejs20.x",),
        packages=("nodejs", "ca-certificates"),
        files=(
            _ENTRYPOINT,
            ("nodejs-bootstrap", "/var/runtime/bootstrap"),
            ("nodejs-index.mjs", "/var/runtime/index.mjs"),
        ),
        client="nodejs",
        cmd="index.handler",
        env=_COMMON_ENV,
    ),
    ImageRecipe(
        name="provided",
        ref="flocid.local/lambda/provided:al2023",
        runtimes=("provided.al2023", "provided.al2", "provided"),
        packages=("curl", "ca-certificates"),
        files=(_ENTRYPOINT, ("provided-bootstrap", "/var/runtime/bootstrap")),
        cmd="function.handler",
        env=_COMMON_ENV,
    ),
)

#: Lambda runtime identifier -> local image reference.
RUNTIME_IMAGES: dict[str, str] = {rt: r.ref for r in RECIPES for rt in r.runtimes}


def local_image_for_runtime(runtime: str) -> str | None:
    """The local image serving ``runtime`` (e.g. ``python3.13``), or None when there is none."""
    return RUNTIME_IMAGES.get(runtime)


@attrs.frozen(kw_only=True)
class BuildOptions:
    suite: str = DEFAULT_SUITE
    #: Debian mirror; None reads it from the machine's apt configuration.
    mirror: str | None = None
    cache_dir: Path = DEFAULT_CACHE_DIR
    #: Rebuild root filesystems and images; the fetched/built runtime clients stay cached (remove
    #: the cache dir to refetch them).
    force: bool = False
    #: Recipe names to build; empty means all.
    only: tuple[str, ...] = ()
    docker: str = "docker"


@attrs.frozen(kw_only=True)
class BuildResult:
    name: str
    ref: str
    #: "built", "imported" (from the cached rootfs), "present" (skipped) or "failed".
    outcome: str
    seconds: float
    detail: str = ""


# --- the Debian mirror, from apt's configuration (pure functions) ---------------------------------


def parse_deb822_sources(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """``(first URI, suites)`` of each enabled ``Types: deb`` stanza of a deb822 ``.sources`` file."""
    entries: list[tuple[str, tuple[str, ...]]] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        uris = fields.get("uris", "").split()
        if uris:
            entries.append((uris[0], tuple(fields.get("suites", "").split())))
    return entries


def parse_one_line_sources(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """``(URI, (suite,))`` of each ``deb`` line of a one-line-style ``sources.list``."""
    entries: list[tuple[str, tuple[str, ...]]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line[4:])
        words = line.split()
        if len(words) >= 2:
            entries.append((words[0], (words[1],)))
    return entries


def pick_debian_mirror(entries: Iterable[tuple[str, tuple[str, ...]]]) -> str | None:
    """The main archive among apt's sources: not the security archive, not a CD-ROM or file."""
    for uri, suites in entries:
        if not uri.startswith(("http://", "https://")):
            continue
        if uri.rstrip("/").endswith("-security") or any(s.endswith("-security") for s in suites):
            continue
        return uri.rstrip("/")
    return None


def mirror_from_apt_config(etc_apt: Path = Path("/etc/apt")) -> str | None:
    """The Debian mirror this machine's apt uses, or None when apt's configuration names none."""
    entries: list[tuple[str, tuple[str, ...]]] = []
    sources_d = etc_apt / "sources.list.d"
    for path in sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []:
        entries += parse_deb822_sources(path.read_text(errors="replace"))
    one_line = [etc_apt / "sources.list"]
    one_line += sorted(sources_d.glob("*.list")) if sources_d.is_dir() else []
    for path in one_line:
        if path.is_file():
            entries += parse_one_line_sources(path.read_text(errors="replace"))
    return pick_debian_mirror(entries)


# --- recipes -> keys, commands ---------------------------------------------------------------------


def recipe_key(recipe: ImageRecipe, suite: str, mirror: str) -> str:
    """A digest of everything that goes into an image: a changed recipe means a rebuilt image."""
    h = hashlib.sha256()
    h.update(json.dumps(attrs.asdict(recipe), sort_keys=True).encode())
    h.update(f"\0{suite}\0{mirror}\0".encode())
    for src, _ in recipe.files:
        h.update((FILES_DIR / src).read_bytes())
    if recipe.client == "python":
        h.update(" ".join(PYTHON_CLIENT_SPECS).encode())
    elif recipe.client == "nodejs":
        h.update(NODE_CLIENT_SPEC.encode())
    return h.hexdigest()[:16]


_SLIM_DPKG = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)


def mmdebstrap_command(
    *,
    suite: str,
    mirror: str,
    target: str,
    packages: Sequence[str],
    variant: str = "minbase",
    hooks: Sequence[str] = (),
    output_format: str = "tar",
) -> list[str]:
    cmd = [
        "mmdebstrap",
        f"--variant={variant}",
        f"--format={output_format}",
        "--aptopt=APT::Install-Recommends \"false\"",
        "--aptopt=Acquire::Retries \"3\"",
        *[f"--dpkgopt={opt}" for opt in _SLIM_DPKG],
    ]
    if packages:
        cmd.append("--include=" + ",".join(packages))
    cmd += [f"--customize-hook={hook}" for hook in hooks]
    cmd += [suite, target, mirror]
    return cmd


def docker_import_command(docker: str, recipe: ImageRecipe, key: str, tarball: Path) -> list[str]:
    changes = [f"ENV {name}={value}" for name, value in recipe.env]
    changes += [
        "WORKDIR /var/task",
        'ENTRYPOINT ["/lambda-entrypoint.sh"]',
        f"CMD {json.dumps([recipe.cmd])}",
        f"LABEL {LABEL_RECIPE}={key} {LABEL_RUNTIMES}={','.join(recipe.runtimes)}",
    ]
    cmd = [docker, "import"]
    for change in changes:
        cmd += ["--change", change]
    cmd += ["--message", f"flocid images build: {recipe.name} ({key})", str(tarball), recipe.ref]
    return cmd


def _wheel_platforms() -> list[str]:
    machine = platform.machine()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in (39, 38, 36, 35, 34, 31, 28, 27, 24, 17)]
    return tags + [f"manylinux2014_{arch}"]


# --- running things ------------------------------------------------------------------------------

_PROGRESS = re.compile(
    r"^(I:|E:|W:|Extracting |Building |Using cmake|curl build|aws-lambda-cpp build|npm (ERR|warn)"
    r"|added \d+ package|gyp (ERR|info ok))"
)


async def run_logged(
    cmd: Sequence[str],
    *,
    log: Log,
    prefix: str,
    logfile: Path,
    show: Callable[[str], bool] = lambda line: bool(_PROGRESS.match(line)),
    env: dict[str, str] | None = None,
) -> None:
    """Run ``cmd``; write all its output to ``logfile``, relay the progress lines, fail loudly."""
    tail: deque[str] = deque(maxlen=25)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    started = last_shown = time.monotonic()

    async def heartbeat() -> None:
        # Long quiet steps (npm compiling curl) still show that they are alive.
        while True:
            await trio.sleep(HEARTBEAT_SECONDS)
            if time.monotonic() - last_shown >= HEARTBEAT_SECONDS:
                log(f"[{prefix}] ... still running {Path(cmd[0]).name} "
                    f"({time.monotonic() - started:.0f}s; log: {logfile})")

    with logfile.open("w") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat)
            proc: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    list(cmd),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    check=False,
                    env=env,
                )
            )
            assert proc.stdout is not None
            pending = b""
            async for chunk in proc.stdout:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip("\r")
                    out.write(line + "\n")
                    tail.append(line)
                    if show(line):
                        last_shown = time.monotonic()
                        log(f"[{prefix}] {line[:110]}")
            if pending:
                out.write(pending.decode(errors="replace") + "\n")
            code = await proc.wait()
            nursery.cancel_scope.cancel()
    if code != 0:
        shown = "\n".join("    " + line for line in tail)
        raise ImageBuildError(
            f"[{prefix}] {Path(cmd[0]).name} failed with exit status {code}; full log: {logfile}\n{shown}"
        )


async def _capture(cmd: Sequence[str]) -> tuple[int, str]:
    result = await trio.run_process(
        list(cmd), stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, result.stdout.decode(errors="replace").strip()


async def image_label(docker: str, ref: str) -> str | None:
    """The recipe key an existing image was built from ("" when unlabelled), None when absent."""
    code, out = await _capture(
        [docker, "image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL_RECIPE}"}}}}', ref]
    )
    if code != 0:
        return None
    return "" if out == "<no value>" else out


async def image_summary(docker: str, ref: str) -> str | None:
    """``"<size> MB, created <date>"`` for an existing image, None when absent."""
    code, out = await _capture([docker, "image", "inspect", "--format", "{{.Size}} {{.Created}}", ref])
    if code != 0:
        return None
    size, _, created = out.partition(" ")
    return f"{int(size) // 1_000_000} MB, created {created[:19]}"


# --- the steps -----------------------------------------------------------------------------------


def _host_ca_bundle() -> Path | None:
    """The CA bundle the host trusts (it may hold a proxy's CA the builder's npm must trust too)."""
    for candidate in (os.environ.get("NODE_EXTRA_CA_CERTS"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


async def fetch_python_client(opts: BuildOptions, log: Log) -> Path:
    """``pip install --target`` the cp313 wheels of awslambdaric (and boto3, as AWS ships it)."""
    key = hashlib.sha256(" ".join(PYTHON_CLIENT_SPECS).encode()).hexdigest()[:12]
    dest = opts.cache_dir / "clients" / f"python3.13-{key}"
    if dest.is_dir():
        log(f"[python] runtime client cached: {dest}")
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-compile",
        "--target", str(tmp), "--implementation", "cp", "--python-version", "3.13",
        "--only-binary=:all:",
    ]
    for tag in _wheel_platforms():
        cmd += ["--platform", tag]
    cmd += list(PYTHON_CLIENT_SPECS)
    log(f"[python] pip: {' '.join(PYTHON_CLIENT_SPECS)} (cp313 wheels)")
    await run_logged(
        cmd, log=log, prefix="python", logfile=opts.cache_dir / "logs" / "python-client.log",
        show=lambda line: line.startswith("Successfully installed"),
    )
    shutil.rmtree(tmp / "bin", ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


async def build_node_client(opts: BuildOptions, mirror: str, log: Log) -> Path:
    """Build npm's aws-lambda-ric (curl + aws-lambda-cpp + a node-addon-api addon) in a Debian
    builder of the same suite, so the addon links against the image's own libraries. Cached."""
    key = hashlib.sha256(f"{NODE_CLIENT_SPEC}\0{opts.suite}".encode()).hexdigest()[:12]
    dest = opts.cache_dir / "clients" / f"nodejs-{key}"
    if (dest / "aws-lambda-ric" / "package.json").is_file():
        log(f"[nodejs] runtime client cached: {dest}")
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env_words = ["npm_config_nodedir=/usr", "npm_config_update_notifier=false", "npm_config_fund=false",
                 "npm_config_audit=false"]
    hooks = []
    ca = _host_ca_bundle()
    if ca is not None:
        hooks.append(f'cp {shlex.quote(str(ca))} "$1"/etc/ssl/certs/flocid-host-ca.crt')
        env_words += ["NODE_EXTRA_CA_CERTS=/etc/ssl/certs/flocid-host-ca.crt",
                      "npm_config_cafile=/etc/ssl/certs/flocid-host-ca.crt"]
    registry = os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY")
    if registry:
        env_words.append(f"npm_config_registry={registry}")
    script = (
        "set -e; mkdir -p /opt/ric && cd /opt/ric && "
        f"echo {shlex.quote(_NODE_BUILD_PACKAGE_JSON)} > package.json && "
        f"env {' '.join(shlex.quote(w) for w in env_words)} "
        f"npm install --no-audit --no-fund --omit=dev {shlex.quote(NODE_CLIENT_SPEC)} && "
        "rm -rf node_modules/aws-lambda-ric/deps node_modules/aws-lambda-ric/build "
        "node_modules/aws-lambda-ric/src && "
        "test -f node_modules/aws-lambda-ric/build/Release/rapid-client.node -o "
        "-f node_modules/aws-lambda-ric/dist/rapid-client.node -o "
        "-n \"$(find node_modules/aws-lambda-ric -name '*.node' -print -quit)\""
    )
    hooks.append(f'chroot "$1" sh -c {shlex.quote(script)}')
    hooks.append(f'cp -a "$1"/opt/ric/node_modules/aws-lambda-ric {shlex.quote(str(tmp))}/')
    log(f"[nodejs] building {NODE_CLIENT_SPEC} (native addon) in a {opts.suite} builder; "
        "first time only, a few minutes")
    cmd = mmdebstrap_command(
        suite=opts.suite, mirror=mirror, target="/dev/null", packages=NODE_BUILDER_PACKAGES,
        variant="apt", hooks=hooks, output_format="null",
    )
    await run_logged(cmd, log=log, prefix="nodejs", logfile=opts.cache_dir / "logs" / "nodejs-client.log")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def stage_files(recipe: ImageRecipe, staging: Path, client_dir: Path | None) -> None:
    """Lay out what flocid adds to the Debian tree: entrypoint, bootstrap, runtime client, /var/task."""
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "var" / "task").mkdir(parents=True)
    (staging / "var" / "runtime").mkdir(parents=True, exist_ok=True)
    (staging / "opt").mkdir()
    for src, dest in recipe.files:
        target = staging / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FILES_DIR / src, target)
        target.chmod(0o644 if dest.endswith((".mjs", ".js", ".py")) else 0o755)
    if client_dir is not None and recipe.client == "python":
        shutil.copytree(client_dir, staging / "var" / "runtime", dirs_exist_ok=True, symlinks=True)
    elif client_dir is not None and recipe.client == "nodejs":
        shutil.copytree(
            client_dir, staging / "var" / "runtime" / "node_modules", dirs_exist_ok=True, symlinks=True
        )


async def build_rootfs(
    recipe: ImageRecipe, opts: BuildOptions, mirror: str, key: str, client_dir: Path | None, log: Log
) -> Path:
    rootfs_dir = opts.cache_dir / "rootfs"
    rootfs_dir.mkdir(parents=True, exist_ok=True)
    tarball = rootfs_dir / f"{recipe.name}-{key}.tar"
    staging = opts.cache_dir / "staging" / recipe.name
    stage_files(recipe, staging, client_dir)
    hooks = [f'cp -a {shlex.quote(str(staging))}/. "$1"/']
    if recipe.client == "python":
        # Precompile so every cold start does not recompile the runtime client (and boto3).
        hooks.append('chroot "$1" python3 -m compileall -q -j 0 /var/runtime >/dev/null')
    tmp = tarball.with_name(tarball.name + ".tmp")
    log(f"[{recipe.name}] mmdebstrap {opts.suite} +{','.join(recipe.packages)} from {mirror}")
    cmd = mmdebstrap_command(
        suite=opts.suite, mirror=mirror, target=str(tmp), packages=recipe.packages, hooks=hooks
    )
    try:
        await run_logged(cmd, log=log, prefix=recipe.name,
                         logfile=opts.cache_dir / "logs" / f"{recipe.name}-rootfs.log")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in rootfs_dir.glob(f"{recipe.name}-*.tar"):
        old.unlink()
    tmp.rename(tarball)
    return tarball


async def _build_one(
    recipe: ImageRecipe, opts: BuildOptions, mirror: str, log: Log, node_client: _Shared
) -> BuildResult:
    started = time.monotonic()
    key = recipe_key(recipe, opts.suite, mirror)
    tarball = opts.cache_dir / "rootfs" / f"{recipe.name}-{key}.tar"
    outcome = "imported"
    if opts.force or not tarball.is_file():
        outcome = "built"
        client_dir: Path | None = None
        if recipe.client == "python":
            client_dir = await fetch_python_client(opts, log)
        elif recipe.client == "nodejs":
            client_dir = await node_client.get()
        tarball = await build_rootfs(recipe, opts, mirror, key, client_dir, log)
    else:
        log(f"[{recipe.name}] root filesystem cached: {tarball}")
    _, previous = await _capture([opts.docker, "image", "inspect", "--format", "{{.Id}}", recipe.ref])
    log(f"[{recipe.name}] docker import -> {recipe.ref}")
    await run_logged(
        docker_import_command(opts.docker, recipe, key, tarball), log=log, prefix=recipe.name,
        logfile=opts.cache_dir / "logs" / f"{recipe.name}-import.log", show=lambda line: False,
    )
    if previous.startswith("sha256:"):
        # The image this one replaces is left untagged; drop it unless a container still uses it.
        await _capture([opts.docker, "image", "rm", previous])
    seconds = time.monotonic() - started
    summary = await image_summary(opts.docker, recipe.ref) or "?"
    log(f"[{recipe.name}] {recipe.ref} {outcome} in {seconds:.1f}s ({summary})")
    return BuildResult(name=recipe.name, ref=recipe.ref, outcome=outcome, seconds=seconds, detail=summary)


class _Shared:
    """A path computed once, on first demand, by whichever task asks first; the others wait."""

    def __init__(self, make: Callable[[], Awaitable[Path]]) -> None:
        self._make = make
        self._lock = trio.Lock()
        self._value: Path | None = None

    async def get(self) -> Path:
        async with self._lock:
            if self._value is None:
                self._value = await self._make()
            return self._value


def select_recipes(only: Sequence[str]) -> list[ImageRecipe]:
    """The recipes named by ``--only`` (a recipe name, an image reference or a runtime id)."""
    if not only:
        return list(RECIPES)
    chosen: list[ImageRecipe] = []
    for wanted in only:
        match = [r for r in RECIPES if wanted in (r.name, r.ref) or wanted in r.runtimes]
        if not match:
            names = ", ".join(r.name for r in RECIPES)
            raise ImageBuildError(f"no image named {wanted!r} (known: {names})")
        chosen += [r for r in match if r not in chosen]
    return chosen


async def check_tools(opts: BuildOptions) -> None:
    missing = [tool for tool in ("mmdebstrap", opts.docker) if shutil.which(tool) is None]
    if missing:
        raise ImageBuildError(
            f"missing tools: {', '.join(missing)}; on Debian: apt-get install mmdebstrap docker.io"
        )
    code, out = await _capture([opts.docker, "version", "--format", "{{.Server.Version}}"])
    if code != 0:
        raise ImageBuildError(f"the Docker engine does not answer ({out or 'docker version failed'}); "
                              "start it, e.g. with scripts/ensure-docker")
    if os.geteuid() != 0:
        raise ImageBuildError("mmdebstrap needs root here (it builds in root mode): run as root")


async def build_images(opts: BuildOptions, log: Log = print) -> list[BuildResult]:
    """Build the selected images in parallel; return one result per image (failures included)."""
    recipes = select_recipes(opts.only)
    mirror = opts.mirror or mirror_from_apt_config()
    if not mirror:
        raise ImageBuildError("no Debian mirror found in /etc/apt (sources.list[.d]); pass --mirror URL")
    started = time.monotonic()
    todo: list[ImageRecipe] = []
    results: list[BuildResult] = []
    for recipe in recipes:
        existing = await image_label(opts.docker, recipe.ref)
        key = recipe_key(recipe, opts.suite, mirror)
        if existing is not None and not opts.force and existing in (key, ""):
            log(f"[{recipe.name}] {recipe.ref} already present (use --force to rebuild)")
            results.append(BuildResult(name=recipe.name, ref=recipe.ref, outcome="present", seconds=0.0))
        else:
            if existing and not opts.force:
                log(f"[{recipe.name}] {recipe.ref} was built from another recipe ({existing}, now {key}); "
                    "rebuilding")
            todo.append(recipe)
    if not todo:
        return results
    await check_tools(opts)
    log(f"building {', '.join(r.ref for r in todo)}: suite {opts.suite}, mirror {mirror}, "
        f"cache {opts.cache_dir}")
    node_client = _Shared(partial(build_node_client, opts, mirror, log))

    async def one(recipe: ImageRecipe) -> None:
        try:
            results.append(await _build_one(recipe, opts, mirror, log, node_client))
        except (ImageBuildError, OSError) as exc:
            log(f"[{recipe.name}] FAILED: {exc}")
            results.append(BuildResult(
                name=recipe.name, ref=recipe.ref, outcome="failed",
                seconds=time.monotonic() - started, detail=str(exc).splitlines()[0],
            ))

    async with trio.open_nursery() as nursery:
        for recipe in todo:
            nursery.start_soon(one, recipe)
    log(f"done in {time.monotonic() - started:.1f}s")
    order = {r.name: i for i, r in enumerate(RECIPES)}
    return sorted(results, key=lambda r: order[r.name])
