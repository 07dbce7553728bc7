"""The code store: AWS's size errors, crafted traversal entries and bombs, atomic writes, modes."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from flocid.lambda_.errors import InvalidParameterValue, RequestTooLarge
from flocid.state.codestore import UNZIP_ERROR, CodeStore, StoredCode

# ------------------------------------------------------------------ crafting zips


def make_zip(
    entries: list[tuple[str, bytes] | tuple[str, bytes, int]],
    *,
    unix: bool = True,
    method: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """Entries are (name, data[, unix mode incl. type bits]); names are written as given."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for item in entries:
            name, data = item[0], item[1]
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            if unix:
                info.create_system = 3
                mode = item[2] if len(item) == 3 else (0o40755 if name.endswith("/") else 0o100644)
                info.external_attr = (mode & 0xFFFF) << 16
            else:
                info.create_system = 0
            zf.writestr(info, data)
    return buf.getvalue()


def central_entries(data: bytes) -> list[int]:
    """Offsets of the central-directory headers, walked from the end-of-central-directory record."""
    eocd = data.rfind(b"PK\x05\x06")
    count = struct.unpack_from("<H", data, eocd + 10)[0]
    pos = struct.unpack_from("<I", data, eocd + 16)[0]
    out = []
    for _ in range(count):
        assert data[pos : pos + 4] == b"PK\x01\x02"
        out.append(pos)
        n, m, k = struct.unpack_from("<HHH", data, pos + 28)
        pos += 46 + n + m + k
    return out


def patch(
    data: bytes,
    index: int,
    *,
    file_size: int | None = None,
    header_offset: int | None = None,
    flag_bits: int | None = None,
) -> bytes:
    """Rewrite fields of one entry in the central directory (and its local header for sizes)."""
    buf = bytearray(data)
    cd = central_entries(data)[index]
    local = struct.unpack_from("<I", buf, cd + 42)[0]
    if file_size is not None:
        struct.pack_into("<I", buf, cd + 24, file_size)
        struct.pack_into("<I", buf, local + 22, file_size)
    if flag_bits is not None:
        struct.pack_into("<H", buf, cd + 8, flag_bits)
        struct.pack_into("<H", buf, local + 6, flag_bits)
    if header_offset is not None:
        struct.pack_into("<I", buf, cd + 42, header_offset)
    return bytes(buf)


def files_under(root: Path) -> list[str]:
    return sorted(
        str(Path(dp, f).relative_to(root)) for dp, _dirs, fs in os.walk(root) for f in fs
    )


def assert_nothing_stored(store: CodeStore, root: Path) -> None:
    assert files_under(root) == []
    assert list((root / "extracted").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "zips").iterdir()) == []


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "code"


@pytest.fixture
def store(root: Path) -> CodeStore:
    return CodeStore(root)


# ------------------------------------------------------------------ the normal path


def test_put_layout_record_and_modes(store: CodeStore, root: Path) -> None:
    data = make_zip([
        ("bootstrap", b"#!/bin/sh\necho hi\n", 0o100755),
        ("handler.py", b"def handler(e, c):\n    return 1\n", 0o100600),
        ("lib/", b""),
        ("lib/suid", b"x", 0o104755),
        ("lib/group.sh", b"y", 0o100710),
        ("deep/er/file.txt", b"z" * 1000),
    ])
    rec = store.put_zip(data)
    digest = hashlib.sha256(data).digest()
    assert rec == StoredCode(
        code_id=digest.hex(),
        sha256_b64=base64.b64encode(digest).decode(),
        size=len(data),
        unzipped_size=18 + 32 + 1 + 1 + 1000,
    )
    assert store.has(rec.code_id)
    assert store.get_zip(rec.code_id) == data
    assert (root / "zips" / f"{rec.code_id}.zip").read_bytes() == data
    tree = store.path(rec.code_id)
    assert tree == root / "extracted" / rec.code_id
    assert files_under(tree) == ["bootstrap", "deep/er/file.txt", "handler.py", "lib/group.sh", "lib/suid"]
    assert (tree / "handler.py").read_bytes().startswith(b"def handler")

    def mode(p: str) -> int:
        return stat.S_IMODE(os.lstat(tree / p).st_mode)

    assert mode("bootstrap") == 0o755
    assert mode("handler.py") == 0o644
    assert mode("lib/suid") == 0o755  # setuid dropped
    assert mode("lib/group.sh") == 0o755
    assert mode("deep/er/file.txt") == 0o644
    assert mode("lib") == 0o755 and mode("deep/er") == 0o755 and mode(".") == 0o755
    assert list((root / "tmp").iterdir()) == []


def test_non_unix_zip_gets_default_modes(store: CodeStore) -> None:
    rec = store.put_zip(make_zip([("a.py", b"x"), ("d/b.py", b"y")], unix=False))
    tree = store.path(rec.code_id)
    assert stat.S_IMODE(os.stat(tree / "a.py").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tree / "d").st_mode) == 0o755


def test_put_twice_stores_once(store: CodeStore, root: Path) -> None:
    data = make_zip([("a.py", b"x")])
    first = store.put_zip(data)
    second = store.put_zip(data)
    assert first == second
    assert len(list((root / "zips").iterdir())) == 1
    assert len(list((root / "extracted").iterdir())) == 1
    assert list((root / "tmp").iterdir()) == []


def test_stat_after_restart(store: CodeStore, root: Path) -> None:
    rec = store.put_zip(make_zip([("a.py", b"x" * 10), ("b/c", b"y" * 5)]))
    again = CodeStore(root)
    assert again.has(rec.code_id)
    assert again.stat(rec.code_id) == rec


def test_stored_methods_and_empty_zip(store: CodeStore) -> None:
    rec = store.put_zip(make_zip([("a.txt", b"plain")], method=zipfile.ZIP_STORED))
    assert (store.path(rec.code_id) / "a.txt").read_bytes() == b"plain"
    rec = store.put_zip(make_zip([("b.txt", b"lzma")], method=zipfile.ZIP_LZMA))
    assert (store.path(rec.code_id) / "b.txt").read_bytes() == b"lzma"
    empty = store.put_zip(make_zip([]))
    assert files_under(store.path(empty.code_id)) == []


def test_windows_backslash_names_are_separators(store: CodeStore) -> None:
    rec = store.put_zip(make_zip([("pkg\\mod.py", b"x")], unix=False))
    assert (store.path(rec.code_id) / "pkg" / "mod.py").read_bytes() == b"x"


def test_duplicate_entries_last_wins(store: CodeStore) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = make_zip([("a.py", b"old"), ("a.py", b"new")])
    rec = store.put_zip(data)
    assert (store.path(rec.code_id) / "a.py").read_bytes() == b"new"


def test_inside_symlink_is_kept(store: CodeStore) -> None:
    data = make_zip([
        ("node_modules/typescript/bin/tsc", b"#!/usr/bin/env node\n", 0o100755),
        ("node_modules/.bin/tsc", b"../typescript/bin/tsc", 0o120777),
    ])
    rec = store.put_zip(data)
    link = store.path(rec.code_id) / "node_modules" / ".bin" / "tsc"
    assert link.is_symlink()
    assert os.readlink(link) == "../typescript/bin/tsc"
    assert link.read_bytes() == b"#!/usr/bin/env node\n"


# ------------------------------------------------------------------ AWS's size and format errors


def test_zipped_too_large(store: CodeStore, root: Path) -> None:
    with pytest.raises(RequestTooLarge) as e:
        store.put_zip(b"\0" * (52_428_800 + 1))
    assert e.value.status == 413
    assert e.value.code == "RequestEntityTooLargeException"
    assert e.value.message == "Zipped size must be smaller than 52428800 bytes"
    assert_nothing_stored(store, root)


@pytest.mark.parametrize("data", [b"", b"not a zip at all", b"PK\x03\x04garbage"])
def test_not_a_zip(store: CodeStore, root: Path, data: bytes) -> None:
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(data)
    assert e.value.message == "Could not unzip uploaded file. Please check your file, then try to upload again."
    assert_nothing_stored(store, root)


def test_corrupt_data_is_unzip_error_and_leaves_nothing(store: CodeStore, root: Path) -> None:
    data = bytearray(make_zip([("a.txt", b"hello world" * 100, 0o100644)], method=zipfile.ZIP_STORED))
    at = data.find(b"hello world")
    data[at] ^= 0xFF  # CRC mismatch
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(bytes(data))
    assert e.value.message == UNZIP_ERROR
    assert_nothing_stored(store, root)


def test_encrypted_entry(store: CodeStore, root: Path) -> None:
    data = patch(make_zip([("a.txt", b"x")]), 0, flag_bits=0x1)
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(data)
    assert e.value.message == UNZIP_ERROR
    assert_nothing_stored(store, root)


def test_declared_unzipped_too_large_refused_before_reading(store: CodeStore, root: Path) -> None:
    data = patch(make_zip([("big.bin", b"\0" * 1000)]), 0, file_size=262_144_001)
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(data)
    assert e.value.message == "Unzipped size must be smaller than 262144000 bytes"
    assert_nothing_stored(store, root)


def test_declared_total_over_limit(root: Path) -> None:
    store = CodeStore(root, max_unzipped=1500)
    data = make_zip([("a", b"\0" * 1000), ("b", b"\0" * 1000)])
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(data)
    assert e.value.message == "Unzipped size must be smaller than 1500 bytes"
    assert_nothing_stored(store, root)
    store.put_zip(make_zip([("a", b"\0" * 1500)]))


# ------------------------------------------------------------------ crafted traversal entries


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "a/../../evil",
        "a/b/../../../evil",
        "/etc/evil",
        "//server/evil",
        "C:/evil",
        "c:\\evil",
        "..\\..\\evil",
        "a\\..\\..\\evil",
        "\\evil",
    ],
)
def test_traversal_entries_refused_nothing_written(store: CodeStore, root: Path, tmp_path: Path, name: str) -> None:
    data = make_zip([("ok.py", b"fine"), (name, b"pwned")])
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(data)
    assert e.value.message is not None
    assert e.value.message.startswith(UNZIP_ERROR + " ")
    assert_nothing_stored(store, root)
    assert not any("evil" in f for f in files_under(tmp_path))


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("l", "/etc/passwd"),
        ("l", ".."),
        ("a/l", "../../etc"),
        ("a/b/l", "../../../x"),
        ("l", ""),
    ],
)
def test_symlink_out_refused_nothing_written(store: CodeStore, root: Path, link: str, target: str) -> None:
    data = make_zip([("ok.py", b"x"), (link, target.encode(), 0o120777)])
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(data)
    assert e.value.message is not None and e.value.message.startswith(UNZIP_ERROR)
    assert_nothing_stored(store, root)


def test_symlink_chain_that_climbs_out_refused(store: CodeStore, root: Path) -> None:
    # Each target stays inside read on its own; z -> a/b/c/../.. climbs out once a/b/c -> ../../x
    # resolves to the root's child x.
    data = make_zip([
        ("x/keep", b"k"),
        ("a/b/c", b"../../x", 0o120777),
        ("z", b"a/b/c/../..", 0o120777),
    ])
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(data)
    assert e.value.message is not None and "'z'" in e.value.message
    assert list((root / "extracted").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []


def test_entry_under_a_symlink_refused(store: CodeStore, root: Path) -> None:
    data = make_zip([("d/", b""), ("l", b"d", 0o120777), ("l/f", b"through the link")])
    with pytest.raises(InvalidParameterValue):
        store.put_zip(data)
    assert_nothing_stored(store, root)


def test_file_and_directory_conflict(store: CodeStore, root: Path) -> None:
    with pytest.raises(InvalidParameterValue):
        store.put_zip(make_zip([("a", b"file"), ("a/b", b"under a file")]))
    with pytest.raises(InvalidParameterValue):
        store.put_zip(make_zip([("a/", b""), ("a", b"file")]))
    assert_nothing_stored(store, root)


# ------------------------------------------------------------------ bombs


def test_overlapping_entries_bomb(store: CodeStore, root: Path) -> None:
    """Two central-directory entries sharing one local header: Fifield's non-recursive bomb."""
    data = make_zip([("a", b"\0" * 100_000), ("b", b"\0" * 100_000)])
    first = struct.unpack_from("<I", data, central_entries(data)[0] + 42)[0]
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(patch(data, 1, header_offset=first))
    assert e.value.message is not None and "overlaps" in e.value.message
    assert_nothing_stored(store, root)


def test_overlapping_spans_bomb(store: CodeStore, root: Path) -> None:
    """An entry whose header sits inside the previous entry's data."""
    data = make_zip([("a", bytes(range(256)) * 400), ("b", b"x")], method=zipfile.ZIP_STORED)
    first = struct.unpack_from("<I", data, central_entries(data)[0] + 42)[0]
    with pytest.raises(InvalidParameterValue):
        store.put_zip(patch(data, 1, header_offset=first + 100))
    assert_nothing_stored(store, root)


def test_high_ratio_entry_refused(root: Path) -> None:
    store = CodeStore(root, max_ratio=100)
    data = make_zip([("zeros.bin", b"\0" * (4 << 20))])
    assert len(data) < 50_000  # ~1000:1
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(data)
    assert e.value.message is not None and "expands more than 100 times" in e.value.message
    assert_nothing_stored(store, root)


def test_lying_small_declared_size_stops_reading(store: CodeStore, root: Path) -> None:
    """Declares 10 bytes, holds 4 MiB: extraction stops at the declared size and the CRC fails."""
    data = patch(make_zip([("liar.bin", b"\0" * (4 << 20))]), 0, file_size=10)
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(data)
    assert e.value.message == UNZIP_ERROR
    assert_nothing_stored(store, root)


def test_lying_large_declared_size(store: CodeStore, root: Path) -> None:
    data = patch(make_zip([("short.bin", b"abc" * 100)]), 0, file_size=100_000)
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(data)
    assert e.value.message == UNZIP_ERROR
    assert_nothing_stored(store, root)


def test_too_many_entries(root: Path) -> None:
    store = CodeStore(root, max_entries=10)
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(make_zip([(f"f{i}", b"") for i in range(11)]))
    assert e.value.message is not None and "more than 10 entries" in e.value.message
    assert_nothing_stored(store, root)
    store.put_zip(make_zip([(f"f{i}", b"") for i in range(10)]))


def test_streaming_limit_is_enforced_even_if_declared_check_passes(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: the byte counter while extracting, with the up-front check disabled."""
    store = CodeStore(root, max_unzipped=1000)
    data = make_zip([("a", b"\0" * 800), ("b", b"\0" * 800)])
    monkeypatch.setattr(store, "_plan", lambda zf: [
        e for info in zf.infolist() if (e := store._entry(zf, info)) is not None
    ])
    with pytest.raises(InvalidParameterValue) as e:
        store.put_zip(data)
    assert e.value.message == "Unzipped size must be smaller than 1000 bytes"
    assert list((root / "extracted").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []


# ------------------------------------------------------------------ atomicity


def test_failure_mid_extraction_leaves_no_final_dir(
    store: CodeStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_zip([(f"f{i}", b"x" * 100) for i in range(10)])
    code_id = hashlib.sha256(data).hexdigest()
    real_fsync = os.fsync
    calls = {"n": 0}

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        store.put_zip(data)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not (root / "extracted" / code_id).exists()
    assert not (root / "zips" / f"{code_id}.zip").exists()
    assert not store.has(code_id)
    assert list((root / "tmp").iterdir()) == []
    assert store.put_zip(data).code_id == code_id  # and it works afterwards


def test_crash_leftovers_cleaned_on_start(
    store: CodeStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed between extraction and rename leaves work in tmp/, never a final name."""
    data = make_zip([("a.py", b"x")])
    code_id = hashlib.sha256(data).hexdigest()

    class Killed(BaseException):
        pass

    def killed(*_a: object, **_k: object) -> None:
        raise Killed

    monkeypatch.setattr(os, "rename", killed)
    monkeypatch.setattr("shutil.rmtree", lambda *a, **k: None)  # a dead process cleans nothing
    with pytest.raises(Killed):
        store.put_zip(data)
    monkeypatch.undo()
    assert list((root / "tmp").iterdir()) != []
    assert not (root / "extracted" / code_id).exists()
    restarted = CodeStore(root)
    assert list((root / "tmp").iterdir()) == []
    assert not restarted.has(code_id)
    assert restarted.put_zip(data).code_id == code_id


def test_extracted_without_zip_is_completed(store: CodeStore, root: Path) -> None:
    """A crash after the tree's rename but before the zip's: the next put finishes the job."""
    data = make_zip([("a.py", b"x")])
    rec = store.put_zip(data)
    (root / "zips" / f"{rec.code_id}.zip").unlink()
    assert not store.has(rec.code_id)
    assert CodeStore(root).put_zip(data) == rec
    assert store.has(rec.code_id)


# ------------------------------------------------------------------ collect and ids


def test_collect(store: CodeStore, root: Path) -> None:
    a = store.put_zip(make_zip([("a.py", b"a")]))
    b = store.put_zip(make_zip([("b.py", b"b")]))
    c = store.put_zip(make_zip([("c.py", b"c")]))
    (root / "extracted" / "not-an-id").mkdir()
    assert store.collect({a.code_id, c.code_id}) == 1
    assert store.has(a.code_id) and store.has(c.code_id) and not store.has(b.code_id)
    with pytest.raises(FileNotFoundError):
        store.path(b.code_id)
    with pytest.raises(FileNotFoundError):
        store.get_zip(b.code_id)
    assert (root / "extracted" / "not-an-id").is_dir()  # not ours: left alone
    assert store.collect(set()) == 2
    assert store.collect(set()) == 0
    assert list((root / "zips").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []
    # collected code can be put again
    assert store.put_zip(make_zip([("a.py", b"a")])) == a


def test_bad_ids(store: CodeStore) -> None:
    for bad in ("../x", "A" * 64, "abc", "0" * 63 + "/"):
        with pytest.raises(ValueError):
            store.has(bad)
        with pytest.raises(ValueError):
            store.path(bad)
        with pytest.raises(ValueError):
            store.get_zip(bad)


def test_overlong_names_refused(store: CodeStore, root: Path) -> None:
    for name in ("a" * 256, "/".join(["d" * 200] * 25)):
        with pytest.raises(InvalidParameterValue) as e:
            store.put_zip(make_zip([(name, b"x")]))
        assert e.value.message is not None and e.value.message.startswith(UNZIP_ERROR)
    assert_nothing_stored(store, root)
    store.put_zip(make_zip([("a" * 255, b"x")]))
