"""Snapshot and restore of the companion state that survives a clean restart: S3 buckets (with
their objects, versions, metadata and tags), SQS queues (attributes, tags, messages), Kinesis
streams (shards, records with their sequence numbers, tags, consumers) and DynamoDB tables (items,
indexes, stream specification and stream records with their sequence numbers).

Synchronous and moto-bound: call it from a worker thread holding the moto limiter. The snapshot
is written to ``<data_dir>/services/`` (``s3.pickle``, ``sqs.pickle``, ``kinesis.pickle``,
``dynamodb.pickle``) on a clean stop and, for the services that changed, about every
``FLOCI_SERVICES_SNAPSHOT_INTERVAL_MS`` while running (``flocid.services.app``); each file is
replaced atomically (write to a temporary name, fsync, rename); a service whose snapshot cannot be written keeps its previous
file and does not stop the others from saving. A file that cannot be read back (a moto upgrade
changed its classes, say) is moved aside as ``*.unreadable`` and the service starts empty rather
than refusing to start.

S3 buckets are pickled whole except for the content of objects over 64 KiB: those bytes go once
to a file of their own in ``s3-objects/`` (a random name, fsynced before the pickle that names it
is written), and the pickle names that file. moto never changes a ``FakeKey``'s content after
creating it (a PutObject or CopyObject makes a new key), so the file name is remembered on the
key and a later snapshot writes only the objects that are new since the previous one: a snapshot
of a large bucket costs its metadata, not its gigabytes. Files no pickle names any more are
deleted after the new pickle is in place. SQS queues hold locks, so a queue is rebuilt from its
settable attributes, and only its messages are pickled; a message that was in flight (received,
not deleted) is visible again after the restart, as if its visibility timeout had run out.

Kinesis streams and DynamoDB tables hold no locks and are pickled whole, so everything a stream
reader depends on comes back as it was: Kinesis shard ids and per-shard sequence numbers, a
table's stream ARN (its label), its stream shard id and each stream record's ``SequenceNumber``.
An event source mapping's checkpoint (``flocid.esm.store``) therefore still names the same
record after a restart, and its poller resumes right after it. Kinesis shard iterators encode
their position and keep working; DynamoDB Streams iterators live in moto's memory only (AWS's
expire after 15 minutes anyway): a reader asks for a new one after a restart.
"""

from __future__ import annotations

import contextvars
import logging
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("flocid.services")

S3_FILE = "s3.pickle"
SQS_FILE = "sqs.pickle"
KINESIS_FILE = "kinesis.pickle"
DYNAMODB_FILE = "dynamodb.pickle"
#: The parts of the snapshot, one file each, by the service name requests carry (``save(parts=...)``).
PARTS = ("s3", "sqs", "kinesis", "dynamodb")
#: Where S3 object content lives, one file per object version (``_save_s3``).
S3_OBJECTS_DIR = "s3-objects"
_FORMAT = 1
#: ``s3.pickle`` with content in ``S3_OBJECTS_DIR``; format 1 (content inline) still loads.
_S3_FORMAT = 2
#: Objects up to this size stay inside ``s3.pickle``: a file (and an fsync) each would cost more
#: than pickling their bytes again at every snapshot.
_INLINE_MAX = 64 * 1024
#: The attribute naming a ``FakeKey``'s content file, once written.
_BLOB_ATTR = "_flocid_blob"
_BLOB_NAME = re.compile(r"^[0-9a-f]{32}$")
#: The content directory of the ``s3.pickle`` being loaded (``_restore_key`` reads from it).
_loading_blobs: contextvars.ContextVar[Path] = contextvars.ContextVar("_loading_blobs")
_QUEUE_ATTRIBUTES = (
    "DelaySeconds", "MaximumMessageSize", "MessageRetentionPeriod", "Policy",
    "ReceiveMessageWaitTimeSeconds", "VisibilityTimeout", "SqsManagedSseEnabled",
    "ContentBasedDeduplication", "DeduplicationScope", "FifoQueue", "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds", "KmsMasterKeyId",
)


def _restore_versioned(lists: list[tuple[str, list[Any]]]) -> Any:
    from moto.s3.utils import _VersionedKeyStore

    store = _VersionedKeyStore()
    for key, versions in lists:
        dict.__setitem__(store, key, list(versions))
    return store


def _reduce_versioned(store: Any) -> tuple[Any, tuple[Any, ...]]:
    return _restore_versioned, ([(key, list(versions)) for key, versions in dict.items(store)],)


def _restore_key(state: dict[str, Any], blob: str | None = None) -> Any:
    """A ``FakeKey`` from its pickled state: content inline, or in the file ``_save_s3`` wrote."""
    from moto.s3.models import FakeKey

    key: Any = FakeKey.__new__(FakeKey)
    if blob is None:
        key.__setstate__(state)
    else:
        key.__setstate__({**state, "value": (_loading_blobs.get() / blob).read_bytes()})
        key.__dict__[_BLOB_ATTR] = blob
    return key


def _dumps(value: Any, reducers: dict[type, Callable[[Any], Any]] | None = None) -> bytes:
    """pickle, keeping every version of every S3 key: moto's ``_VersionedKeyStore`` is a dict
    whose ``items()`` yields only the latest version, which plain pickling would keep alone."""
    import copyreg
    import io

    from moto.s3.utils import _VersionedKeyStore

    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = copyreg.dispatch_table.copy()
    pickler.dispatch_table[_VersionedKeyStore] = _reduce_versioned
    pickler.dispatch_table.update(reducers or {})
    pickler.dump(value)
    return buf.getvalue()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path: Path, formats: tuple[int, ...] = (_FORMAT,), companion: Path | None = None) -> Any:
    """The snapshot in ``path``, or None. An unreadable one is moved aside, with its
    ``companion`` directory (S3's content files), so the next save cannot collect that."""
    if not path.exists():
        return None
    try:
        data = pickle.loads(path.read_bytes())  # noqa: S301 - our own file in our own data dir
        if not isinstance(data, dict) or data.get("format") not in formats:
            raise ValueError("unknown snapshot format")
        return data
    except Exception as exc:  # noqa: BLE001 - any unreadable snapshot is set aside, not fatal
        aside = path.with_name(path.name + ".unreadable")
        log.warning("cannot restore %s (%s); moved it to %s and starting empty", path, exc, aside)
        os.replace(path, aside)
        if companion is not None and companion.is_dir():
            beside = companion.with_name(companion.name + ".unreadable")
            if beside.exists():
                shutil.rmtree(beside)
            os.replace(companion, beside)
        return None


def _count_keys() -> dict[str, int]:
    return {"buckets": 0, "objects": 0, "queues": 0, "messages": 0, "streams": 0, "records": 0,
            "tables": 0, "items": 0, "stream_records": 0}


class SnapshotIncomplete(Exception):
    """Some parts of the snapshot could not be written (each one logged with its cause); the
    others were. ``failed`` names the parts, ``counts`` is what was written."""

    def __init__(self, failed: frozenset[str], counts: dict[str, int]) -> None:
        super().__init__("cannot write the snapshot of " + ", ".join(sorted(failed)))
        self.failed = failed
        self.counts = counts


def save(directory: Path, parts: Iterable[str] | None = None) -> dict[str, int]:
    """Write the snapshot of every service, or of the ``parts`` named (from ``PARTS``); returns
    counts (buckets, objects, queues, messages, streams, records, tables, items, stream_records)
    of what was written, or raises ``SnapshotIncomplete`` after writing what it could."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = set(PARTS if parts is None else parts)
    counts = _count_keys()
    failed: set[str] = set()
    for key, name, part in (("s3", "S3", _save_s3), ("sqs", "SQS", _save_sqs),
                            ("kinesis", "Kinesis", _save_kinesis), ("dynamodb", "DynamoDB", _save_dynamodb)):
        if key not in wanted:
            continue
        try:
            part(directory, counts)
        except Exception:  # noqa: BLE001 - one service's snapshot must not cost the others theirs
            log.exception("cannot write the %s snapshot to %s", name, directory)
            failed.add(key)
    if failed:
        raise SnapshotIncomplete(frozenset(failed), counts)
    return counts


def _save_s3(directory: Path, counts: dict[str, int]) -> None:
    from moto.s3.models import FakeKey, s3_backends

    blobs = directory / S3_OBJECTS_DIR
    blobs.mkdir(exist_ok=True)
    present = set(os.listdir(blobs))
    named: set[str] = set()
    written = 0

    def reduce_key(key: Any) -> Any:
        nonlocal written
        if getattr(key, "contentsize", 0) <= _INLINE_MAX:
            return _restore_key, (key.__getstate__(),)
        blob = key.__dict__.get(_BLOB_ATTR)
        if blob is None or blob not in present:
            blob = uuid.uuid4().hex
            with open(blobs / blob, "wb") as f:
                # In pieces from moto's buffer (a spooled file), not a copy of a big object in memory.
                with key.lock:
                    try:
                        key._value_buffer.seek(0)
                        shutil.copyfileobj(key._value_buffer, f, 1 << 20)
                    except ValueError:  # a disposed key: its buffer is closed (moto's __getstate__ says "")
                        f.truncate(0)
                f.flush()
                os.fsync(f.fileno())
            present.add(blob)
            written += 1
            key.__dict__[_BLOB_ATTR] = blob
        named.add(blob)
        state = {k: v for k, v in key.__dict__.items() if k not in ("_value_buffer", "lock", _BLOB_ATTR)}
        return _restore_key, (state, blob)

    buckets: list[tuple[str, str, Any]] = []
    for account in list(s3_backends.keys()):
        for partition in list(s3_backends[account].keys()):
            for bucket in s3_backends[account][partition].buckets.values():
                buckets.append((account, partition, bucket))
                counts["buckets"] += 1
                counts["objects"] += len(bucket.keys)
    data = _dumps({"format": _S3_FORMAT, "buckets": buckets}, {FakeKey: reduce_key})
    if written:
        _fsync_dir(blobs)
    _write_atomic(directory / S3_FILE, data)
    # Only now is no snapshot on disk naming the content of deleted or replaced objects.
    for name in present - named:
        if _BLOB_NAME.match(name):
            try:
                os.unlink(blobs / name)
            except OSError as exc:
                log.warning("cannot delete %s: %s", blobs / name, exc)


def _queue_attributes(queue: Any) -> dict[str, Any]:
    """What moto's ``Queue.attributes`` says of the settable attributes and the redrive policy,
    without its approximate message counts: those read the clock three times per message (300 ms
    for a queue of 10,000), and a snapshot taken every second must not hold the moto thread that
    long."""
    import json

    from moto.core.utils import camelcase_to_underscores

    applicable = set(queue.BASE_ATTRIBUTES)
    if queue.fifo_queue:
        applicable.update(queue.FIFO_ATTRIBUTES)
    if queue.kms_master_key_id:
        applicable.update(queue.KMS_ATTRIBUTES)
    result: dict[str, Any] = {}
    for name in _QUEUE_ATTRIBUTES:
        if name in applicable:
            value = getattr(queue, camelcase_to_underscores(name))
            result[name] = str(value).lower() if isinstance(value, bool) else value
    if queue.redrive_policy:
        result["RedrivePolicy"] = json.dumps(queue.redrive_policy)
    return result


def _save_sqs(directory: Path, counts: dict[str, int]) -> None:
    from moto.sqs.models import sqs_backends

    queues: list[dict[str, Any]] = []
    for account in list(sqs_backends.keys()):
        for region in list(sqs_backends[account].keys()):
            for queue in sqs_backends[account][region].queues.values():
                attributes = _queue_attributes(queue)
                settable = {k: attributes[k] for k in _QUEUE_ATTRIBUTES
                            if attributes.get(k) is not None}
                messages = list(queue._messages)
                queues.append({
                    "account": account, "region": region, "name": queue.name,
                    "attributes": settable, "redrive": attributes.get("RedrivePolicy"),
                    "tags": dict(queue.tags), "messages": pickle.dumps(messages),
                })
                counts["queues"] += 1
                counts["messages"] += len(messages)
    _write_atomic(directory / SQS_FILE, pickle.dumps({"format": _FORMAT, "queues": queues}))


def _save_kinesis(directory: Path, counts: dict[str, int]) -> None:
    from moto.kinesis.models import kinesis_backends

    regions: list[dict[str, Any]] = []
    for account in list(kinesis_backends.keys()):
        for region in list(kinesis_backends[account].keys()):
            backend = kinesis_backends[account][region]
            if not backend.streams and not backend.resource_policies:
                continue
            regions.append({"account": account, "region": region, "streams": list(backend.streams.values()),
                            "policies": dict(backend.resource_policies)})
            for stream in backend.streams.values():
                counts["streams"] += 1
                counts["records"] += sum(len(shard.records) for shard in stream.shards.values())
    _write_atomic(directory / KINESIS_FILE,
                  pickle.dumps({"format": _FORMAT, "regions": regions}, protocol=pickle.HIGHEST_PROTOCOL))


def _save_dynamodb(directory: Path, counts: dict[str, int]) -> None:
    from moto.dynamodb.models import dynamodb_backends

    regions: list[dict[str, Any]] = []
    for account in list(dynamodb_backends.keys()):
        for region in list(dynamodb_backends[account].keys()):
            backend = dynamodb_backends[account][region]
            if not backend.tables and not backend.backups and not backend.resource_policies:
                continue
            regions.append({"account": account, "region": region, "tables": list(backend.tables.values()),
                            "backups": dict(backend.backups), "policies": dict(backend.resource_policies)})
            for table in backend.tables.values():
                counts["tables"] += 1
                counts["items"] += len(table)
                if table.stream_shard is not None:
                    counts["stream_records"] += len(table.stream_shard.items)
    _write_atomic(directory / DYNAMODB_FILE,
                  pickle.dumps({"format": _FORMAT, "regions": regions}, protocol=pickle.HIGHEST_PROTOCOL))


def load(directory: Path) -> dict[str, int]:
    """Restore what ``save`` wrote (missing files restore nothing); returns counts."""
    from moto.s3.models import s3_backends
    from moto.sqs.models import sqs_backends

    counts = _count_keys()
    token = _loading_blobs.set(directory / S3_OBJECTS_DIR)
    try:
        s3 = _read(directory / S3_FILE, (_FORMAT, _S3_FORMAT), directory / S3_OBJECTS_DIR)
    finally:
        _loading_blobs.reset(token)
    for account, partition, bucket in (s3 or {}).get("buckets", ()):
        s3_backends[account][partition].buckets[bucket.name] = bucket
        s3_backends.bucket_accounts[bucket.name] = (partition, account)
        counts["buckets"] += 1
        counts["objects"] += len(bucket.keys)

    sqs = _read(directory / SQS_FILE)
    saved = (sqs or {}).get("queues", ())
    for item in saved:
        backend = sqs_backends[item["account"]][item["region"]]
        try:
            queue = backend.create_queue(item["name"], tags=item["tags"], **item["attributes"])
        except Exception as exc:  # noqa: BLE001 - one bad queue must not lose the others
            log.warning("cannot restore SQS queue %s: %s", item["name"], exc)
            continue
        messages = pickle.loads(item["messages"])  # noqa: S301 - our own snapshot
        for message in messages:
            message.receipt_handle = None
            message.visible_at = 0.0
        queue._messages.extend(messages)
        counts["queues"] += 1
        counts["messages"] += len(messages)
    # Dead-letter targets exist only once every queue is back.
    for item in saved:
        if item["redrive"]:
            redrive = item["redrive"]
            try:
                sqs_backends[item["account"]][item["region"]].set_queue_attributes(
                    item["name"], {"RedrivePolicy": redrive})
            except Exception as exc:  # noqa: BLE001
                log.warning("cannot restore the redrive policy of SQS queue %s: %s", item["name"], exc)
    _load_kinesis(directory, counts)
    _load_dynamodb(directory, counts)
    return counts


def _load_kinesis(directory: Path, counts: dict[str, int]) -> None:
    from moto.kinesis.models import kinesis_backends

    snapshot = _read(directory / KINESIS_FILE)
    for item in (snapshot or {}).get("regions", ()):
        backend = kinesis_backends[item["account"]][item["region"]]
        for stream in item["streams"]:
            # moto's own Lambda mappings are not flocid's (flocid.esm polls the stream itself).
            stream.lambda_event_source_mappings = {}
            backend.streams[stream.stream_name] = stream
            counts["streams"] += 1
            counts["records"] += sum(len(shard.records) for shard in stream.shards.values())
        backend.resource_policies.update(item["policies"])


def _load_dynamodb(directory: Path, counts: dict[str, int]) -> None:
    from moto.dynamodb.models import dynamodb_backends

    snapshot = _read(directory / DYNAMODB_FILE)
    for item in (snapshot or {}).get("regions", ()):
        backend = dynamodb_backends[item["account"]][item["region"]]
        for table in item["tables"]:
            table.lambda_event_source_mappings = {}
            backend.tables[table.name] = table
            counts["tables"] += 1
            counts["items"] += len(table)
            if table.stream_shard is not None:
                counts["stream_records"] += len(table.stream_shard.items)
        backend.backups.update(item["backups"])
        backend.resource_policies.update(item["policies"])
