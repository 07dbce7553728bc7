"""The durable store: one SQLite database (WAL) holding every Lambda resource as JSON rows.

This is the only module that writes the database. Each ``write`` is one transaction, so a crash
(``kill -9`` included) leaves the old state or the new one, never a mix; ``synchronous=FULL`` makes an
acknowledged write survive power loss too. Reads happen once at start-up: the control plane keeps the
live state in memory and writes through.

Tables (each row: key columns + a JSON ``body``):

    functions     region, account, name, version      one row per $LATEST / published version
    function_meta region, account, name               version counter, creation time
    aliases       region, account, name, alias
    policies      region, account, name, qualifier    qualifier "" = the unqualified function
    url_configs   region, account, name, qualifier
    tags          region, account, name
    concurrency   region, account, name               reserved concurrency
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

TABLES: dict[str, tuple[str, ...]] = {
    "functions": ("region", "account", "name", "version"),
    "function_meta": ("region", "account", "name"),
    "aliases": ("region", "account", "name", "alias"),
    "policies": ("region", "account", "name", "qualifier"),
    "url_configs": ("region", "account", "name", "qualifier"),
    "tags": ("region", "account", "name"),
    "concurrency": ("region", "account", "name"),
}

SCHEMA_VERSION = 1


class StoreError(Exception):
    """The data directory cannot be used (unwritable, corrupt, newer schema)."""


@attrs.frozen
class Put:
    table: str
    key: tuple[str, ...]
    body: dict[str, Any]


@attrs.frozen
class Delete:
    """Delete rows whose leading key columns equal ``key`` (a prefix deletes many)."""

    table: str
    key: tuple[str, ...]


Op = Put | Delete


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=OFF")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the state database {path}: {exc}") from exc
        self._lock = threading.Lock()

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        row = db.execute("SELECT v FROM meta WHERE k='schema'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer flocid (schema {row[0]} > {SCHEMA_VERSION})"
            )
        db.execute("BEGIN IMMEDIATE")
        for table, cols in TABLES.items():
            colsql = ", ".join(f"{c} TEXT NOT NULL" for c in cols)
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ({colsql}, body TEXT NOT NULL, "
                f"PRIMARY KEY ({', '.join(cols)}))"
            )
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")

    def rows(self, table: str) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
        cols = TABLES[table]
        with self._lock:
            fetched = self._db.execute(f"SELECT {', '.join(cols)}, body FROM {table}").fetchall()
        for row in fetched:
            yield tuple(row[: len(cols)]), json.loads(row[len(cols)])

    def write(self, ops: Sequence[Op]) -> None:
        """Apply ``ops`` in one transaction."""
        if not ops:
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for op in ops:
                    cols = TABLES[op.table]
                    if isinstance(op, Put):
                        if len(op.key) != len(cols):
                            raise ValueError(f"bad key {op.key} for {op.table}")
                        db.execute(
                            f"INSERT OR REPLACE INTO {op.table} VALUES "
                            f"({', '.join('?' * (len(cols) + 1))})",
                            (*op.key, json.dumps(op.body, separators=(",", ":"))),
                        )
                    else:
                        where = " AND ".join(f"{c}=?" for c in cols[: len(op.key)])
                        db.execute(f"DELETE FROM {op.table} WHERE {where}", op.key)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()
