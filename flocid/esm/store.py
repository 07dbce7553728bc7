"""Durable state of event source mappings: ``<data_dir>/esm.db`` (SQLite, WAL).

Two tables: ``mappings`` (one JSON document per UUID, the mapping as stored) and ``checkpoints``
(per mapping and shard, the last sequence number a function handled successfully). Every write is
one transaction, so a crash leaves the old row or the new one. Synchronous by design: callers run
it in a worker thread (``EsmService`` does, one call at a time).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


class EsmStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS mappings (uuid TEXT PRIMARY KEY, doc TEXT NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS checkpoints (uuid TEXT NOT NULL, shard TEXT NOT NULL, "
            "seq TEXT NOT NULL, PRIMARY KEY (uuid, shard))"
        )

    def load(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM mappings").fetchall()
        return [json.loads(r[0]) for r in rows]

    def put(self, uuid: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO mappings (uuid, doc) VALUES (?, ?)",
                             (uuid, json.dumps(doc, separators=(",", ":"))))

    def delete(self, uuid: str) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM mappings WHERE uuid = ?", (uuid,))
            self._db.execute("DELETE FROM checkpoints WHERE uuid = ?", (uuid,))
            self._db.execute("COMMIT")

    def checkpoints(self, uuid: str) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute("SELECT shard, seq FROM checkpoints WHERE uuid = ?", (uuid,)).fetchall()
        return {str(s): str(q) for s, q in rows}

    def set_checkpoint(self, uuid: str, shard: str, seq: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO checkpoints (uuid, shard, seq) VALUES (?, ?, ?)",
                             (uuid, shard, seq))

    def close(self) -> None:
        with self._lock:
            self._db.close()
