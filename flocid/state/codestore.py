"""The code store: deployment packages kept once per content, and their extracted trees.

Layout under ``root``::

    zips/<sha256-hex>.zip        the package as uploaded (GetFunction's Code.Location serves it)
    extracted/<sha256-hex>/      its content, mounted read-only at /var/task (or a layer's /opt)
    tmp/                         work area; whatever is here at start-up is a crash's leftover

Content addressing makes publish cheap (a version shares its code with ``$LATEST`` until the
next update) and makes writes idempotent: two puts of the same bytes end with the same files.

Synchronous on purpose: the caller runs it in a worker thread (``trio.to_thread.run_sync``).
It touches nothing but ``root``.

What it refuses, with AWS's errors (``aws-recorded-errors.txt``, ``TestLambdaSizeLimits``;
peers.md 1.10 item 34):

* more than 52428800 zipped bytes: 413 RequestEntityTooLargeException
  "Zipped size must be smaller than 52428800 bytes";
* anything zipfile cannot read (not a zip, bad CRC, encrypted, unknown method): 400
  "Could not unzip uploaded file. Please check your file, then try to upload again.";
* more than 262144000 unzipped bytes: 400 "Unzipped size must be smaller than 262144000 bytes".
  Checked on the declared sizes before anything is written, and again on the bytes actually
  produced while extracting (declared sizes can lie);
* entries that would land outside the package (absolute paths, ``..``, drive letters, the same
  with backslashes, symlinks whose target leaves the tree): 400, AWS's unzip sentence followed by
  the reason. Checked before anything is written;
* zip bombs: entries whose data overlap or share a header (the "non-recursive" bomb), too many
  entries, an entry expanding more than ``max_ratio`` times.

Writes are atomic: a package is extracted into ``tmp/``, each file and directory fsynced, then
renamed to ``extracted/<id>``; the zip is written to ``tmp/``, fsynced and renamed to
``zips/<id>.zip``. A crash leaves either nothing under the final names or a complete copy.
``has(id)`` needs both. Modes: directories 0o755, files 0o755 when any execute bit was set
(``bootstrap``), else 0o644; no setuid/setgid/sticky, whatever the zip says. Backslashes in entry
names are read as separators (zips made on Windows).
"""

from __future__ import annotations

import base64
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path

import attrs

from flocid.lambda_.errors import InvalidParameterValue, RequestTooLarge

MAX_ZIPPED_BYTES = 52_428_800
MAX_UNZIPPED_BYTES = 262_144_000
MAX_ENTRIES = 100_000
#: An entry above RATIO_MIN_SIZE may expand at most this many times (deflate's own ceiling is ~1032).
MAX_RATIO = 2000
RATIO_MIN_SIZE = 1 << 20
MAX_LINK_TARGET = 4096

UNZIP_ERROR = "Could not unzip uploaded file. Please check your file, then try to upload again."
_CHUNK = 1 << 20
_ID_RE = re.compile(r"[0-9a-f]{64}")
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
    UnicodeDecodeError,
)


@attrs.frozen
class StoredCode:
    #: sha256 hex of the zip: the store key (``FunctionConfig.code_id``).
    code_id: str
    #: base64 of the same digest: AWS's ``CodeSha256``.
    sha256_b64: str
    #: zip bytes: AWS's ``CodeSize``.
    size: int
    #: bytes of the extracted files.
    unzipped_size: int


@attrs.frozen
class _Entry:
    kind: str  # "file" | "dir" | "link"
    parts: tuple[str, ...]
    info: zipfile.ZipInfo
    mode: int
    target: str = ""


def _too_big_unzipped(limit: int) -> InvalidParameterValue:
    return InvalidParameterValue(f"Unzipped size must be smaller than {limit} bytes")


def _refuse(reason: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{UNZIP_ERROR} {reason}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_id(code_id: str) -> None:
    if not _ID_RE.fullmatch(code_id):
        raise ValueError(f"not a code id: {code_id!r}")


class CodeStore:
    """Zips and extracted trees under ``root``, keyed by the zip's sha256 (hex)."""

    def __init__(
        self,
        root: Path,
        *,
        max_zipped: int = MAX_ZIPPED_BYTES,
        max_unzipped: int = MAX_UNZIPPED_BYTES,
        max_entries: int = MAX_ENTRIES,
        max_ratio: int = MAX_RATIO,
    ) -> None:
        self.root = Path(root)
        self.max_zipped = max_zipped
        self.max_unzipped = max_unzipped
        self.max_entries = max_entries
        self.max_ratio = max_ratio
        self._zips = self.root / "zips"
        self._extracted = self.root / "extracted"
        self._tmp = self.root / "tmp"
        for d in (self._zips, self._extracted, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        # One store per root per process: what tmp/ holds now is a dead process's half-work.
        for leftover in self._tmp.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._known: dict[str, StoredCode] = {}

    # ---------------------------------------------------------------- queries

    def has(self, code_id: str) -> bool:
        _check_id(code_id)
        return (self._zips / f"{code_id}.zip").is_file() and (self._extracted / code_id).is_dir()

    def path(self, code_id: str) -> Path:
        """The extracted tree (treat as read-only)."""
        _check_id(code_id)
        p = self._extracted / code_id
        if not p.is_dir():
            raise FileNotFoundError(p)
        return p

    def get_zip(self, code_id: str) -> bytes:
        _check_id(code_id)
        return (self._zips / f"{code_id}.zip").read_bytes()

    def stat(self, code_id: str) -> StoredCode:
        """The record of a stored package (sizes recomputed from disk after a restart)."""
        _check_id(code_id)
        known = self._known.get(code_id)
        if known is not None:
            return known
        size = (self._zips / f"{code_id}.zip").stat().st_size
        unzipped = 0
        for dirpath, _dirs, files in os.walk(self.path(code_id)):
            for f in files:
                st = os.lstat(os.path.join(dirpath, f))
                if stat.S_ISREG(st.st_mode):
                    unzipped += st.st_size
        record = StoredCode(
            code_id=code_id,
            sha256_b64=base64.b64encode(bytes.fromhex(code_id)).decode(),
            size=size,
            unzipped_size=unzipped,
        )
        self._known[code_id] = record
        return record

    # ---------------------------------------------------------------- put

    def put_zip(self, data: bytes) -> StoredCode:
        """Validate, store the zip once by sha256 and extract it once."""
        if len(data) > self.max_zipped:
            raise RequestTooLarge(f"Zipped size must be smaller than {self.max_zipped} bytes")
        digest = hashlib.sha256(data).digest()
        code_id = digest.hex()
        if self.has(code_id):
            return self.stat(code_id)

        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except _READ_ERRORS as exc:
            raise InvalidParameterValue(UNZIP_ERROR) from exc
        with zf:
            entries = self._plan(zf)  # raises before anything is written
            work = Path(tempfile.mkdtemp(prefix="x-", dir=self._tmp))
            try:
                unzipped = self._extract(zf, entries, work)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise

        zip_tmp = self._write_temp_zip(data)
        with self._lock:
            final = self._extracted / code_id
            if final.is_dir():
                # Another put of the same bytes won (or a crash left a complete copy): same content.
                shutil.rmtree(work, ignore_errors=True)
            else:
                os.rename(work, final)
                _fsync_dir(self._extracted)
            os.replace(zip_tmp, self._zips / f"{code_id}.zip")
            _fsync_dir(self._zips)
            record = StoredCode(
                code_id=code_id,
                sha256_b64=base64.b64encode(digest).decode(),
                size=len(data),
                unzipped_size=unzipped,
            )
            self._known[code_id] = record
        return record

    def _write_temp_zip(self, data: bytes) -> Path:
        fd, name = tempfile.mkstemp(prefix="z-", suffix=".zip", dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            os.unlink(name)
            raise
        return Path(name)

    def _plan(self, zf: zipfile.ZipFile) -> list[_Entry]:
        """Read the central directory and refuse anything unsafe; write nothing."""
        try:
            infos = zf.infolist()
        except _READ_ERRORS as exc:  # pragma: no cover - infolist is already parsed
            raise InvalidParameterValue(UNZIP_ERROR) from exc
        if len(infos) > self.max_entries:
            raise _refuse(f"The package has more than {self.max_entries} entries.")
        self._check_layout(zf, infos)

        by_path: dict[tuple[str, ...], _Entry] = {}
        for info in infos:
            entry = self._entry(zf, info)
            if entry is None:
                continue
            old = by_path.get(entry.parts)
            if old is not None and (old.kind == "dir") != (entry.kind == "dir"):
                raise _refuse(f"Entry '{info.filename}' is both a directory and a file.")
            by_path[entry.parts] = entry  # a repeated file: the last copy wins, as with unzip -o

        declared = 0
        for parts, entry in by_path.items():
            for i in range(1, len(parts)):
                parent = by_path.get(parts[:i])
                if parent is not None and parent.kind != "dir":
                    raise _refuse(
                        f"Entry '{entry.info.filename}' lies under '{parent.info.filename}', "
                        "which is not a directory."
                    )
            if entry.kind == "file":
                declared += entry.info.file_size
                if declared > self.max_unzipped:
                    raise _too_big_unzipped(self.max_unzipped)
                info = entry.info
                if (
                    info.file_size > RATIO_MIN_SIZE
                    and info.file_size > self.max_ratio * max(info.compress_size, 1)
                ):
                    raise _refuse(
                        f"Entry '{info.filename}' expands more than {self.max_ratio} times."
                    )
        return list(by_path.values())

    def _check_layout(self, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
        """Each entry's data must lie in its own span of the file: overlapping or shared local
        headers are how a small zip declares huge output without lying about any one size."""
        spans = sorted((i.header_offset, i.compress_size, i.filename) for i in infos)
        end_of_data = getattr(zf, "start_dir", None)
        for i, (off, csize, name) in enumerate(spans):
            lower_end = off + 30 + csize  # a local header is at least 30 bytes
            if i + 1 < len(spans) and spans[i + 1][0] < lower_end:
                raise _refuse(f"Entry '{name}' overlaps another entry.")
            if isinstance(end_of_data, int) and lower_end > end_of_data:
                raise _refuse(f"Entry '{name}' overlaps the central directory.")

    def _entry(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Entry | None:
        raw = info.filename
        if info.flag_bits & 0x1:
            raise InvalidParameterValue(UNZIP_ERROR)  # encrypted
        if "\x00" in raw:
            raise _refuse("An entry name contains a NUL byte.")
        name = raw.replace("\\", "/")
        if name.startswith("/") or _DRIVE_RE.match(name):
            raise _refuse(f"Entry '{raw}' has an absolute path.")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise _refuse(f"Entry '{raw}' would be written outside the package directory.")
        if not parts:
            return None  # "./" and the like: the root itself
        if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts) or len(name) > 4000:
            raise _refuse(f"Entry '{raw[:300]}' has a name too long for the file system.")
        unix_mode = (info.external_attr >> 16) if info.create_system == 3 else 0
        if name.endswith("/") or stat.S_ISDIR(unix_mode):
            return _Entry("dir", parts, info, 0o755)
        if stat.S_ISLNK(unix_mode):
            if info.file_size > MAX_LINK_TARGET:
                raise _refuse(f"Symlink '{raw}' has an overlong target.")
            try:
                target = zf.read(info).decode("utf-8")
            except _READ_ERRORS as exc:
                raise InvalidParameterValue(UNZIP_ERROR) from exc
            if not _link_stays_inside(parts, target):
                raise _refuse(f"Symlink '{raw}' points outside the package directory.")
            return _Entry("link", parts, info, 0o777, target)
        mode = 0o755 if unix_mode & 0o111 else 0o644
        return _Entry("file", parts, info, mode)

    def _extract(self, zf: zipfile.ZipFile, entries: list[_Entry], work: Path) -> int:
        """Write ``entries`` under ``work``; returns the bytes written. Symlinks last, so no file
        is ever written through one."""
        total = 0
        dirs: set[Path] = {work}
        for entry in entries:
            if entry.kind == "dir":
                self._mkdirs(work, entry.parts, dirs)
        for entry in entries:
            if entry.kind != "file":
                continue
            self._mkdirs(work, entry.parts[:-1], dirs)
            dest = work.joinpath(*entry.parts)
            total = self._write_file(zf, entry, dest, total)
        links = [e for e in entries if e.kind == "link"]
        for entry in links:
            self._mkdirs(work, entry.parts[:-1], dirs)
            os.symlink(entry.target, work.joinpath(*entry.parts))
        if links:
            # Each link checked alone stays inside; chains of links can still climb out together.
            base = os.path.realpath(work)
            for entry in links:
                resolved = os.path.realpath(work.joinpath(*entry.parts))
                if resolved != base and not resolved.startswith(base + os.sep):
                    raise _refuse(
                        f"Symlink '{entry.info.filename}' points outside the package directory."
                    )
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            os.chmod(d, 0o755)
            _fsync_dir(d)
        return total

    def _mkdirs(self, work: Path, parts: tuple[str, ...], made: set[Path]) -> None:
        cur = work
        for part in parts:
            cur = cur / part
            if cur not in made:
                try:
                    os.mkdir(cur, 0o755)
                except FileExistsError:
                    if cur.is_symlink() or not cur.is_dir():
                        raise _refuse("Conflicting entries in the package.") from None
                made.add(cur)

    def _write_file(self, zf: zipfile.ZipFile, entry: _Entry, dest: Path, total: int) -> int:
        info = entry.info
        written = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(dest, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            try:
                src = zf.open(info)
            except _READ_ERRORS as exc:
                raise InvalidParameterValue(UNZIP_ERROR) from exc
            with src:
                while True:
                    try:
                        chunk = src.read(_CHUNK)
                    except _READ_ERRORS as exc:
                        raise InvalidParameterValue(UNZIP_ERROR) from exc
                    if not chunk:
                        break
                    written += len(chunk)
                    total += len(chunk)
                    if total > self.max_unzipped:
                        raise _too_big_unzipped(self.max_unzipped)
                    if written > info.file_size:
                        raise _refuse(f"Entry '{info.filename}' is larger than it declares.")
                    out.write(chunk)
            if written != info.file_size:
                raise InvalidParameterValue(UNZIP_ERROR)
            out.flush()
            os.fchmod(out.fileno(), entry.mode)
            os.fsync(out.fileno())
        return total

    # ---------------------------------------------------------------- collect

    def collect(self, keep: set[str]) -> int:
        """Delete every package whose id is not in ``keep``; returns how many were deleted.

        The caller computes ``keep`` and must not commit new references to codes put after that
        computation until this returns (hold its own write lock across both).
        """
        removed = 0
        with self._lock:
            ids = {p.name[:-4] for p in self._zips.iterdir() if p.name.endswith(".zip")}
            ids |= {p.name for p in self._extracted.iterdir()}
            for code_id in sorted(ids):
                if not _ID_RE.fullmatch(code_id) or code_id in keep:
                    continue
                (self._zips / f"{code_id}.zip").unlink(missing_ok=True)
                tree = self._extracted / code_id
                if tree.is_dir():
                    # Out of its final name first, so a crash never leaves half a tree there.
                    grave = Path(tempfile.mkdtemp(prefix="d-", dir=self._tmp))
                    os.rename(tree, grave / "tree")
                    shutil.rmtree(grave, ignore_errors=True)
                self._known.pop(code_id, None)
                removed += 1
            if removed:
                _fsync_dir(self._zips)
                _fsync_dir(self._extracted)
        return removed


def _link_stays_inside(parts: tuple[str, ...], target: str) -> bool:
    """Lexically: does ``target``, read from the link's directory, stay inside the package?"""
    if not target or "\x00" in target or target.startswith("/"):
        return False
    stack = list(parts[:-1])
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not stack:
                return False
            stack.pop()
        else:
            stack.append(comp)
    return True
