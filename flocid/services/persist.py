"""Snapshot and restore of the companion state that survives a clean restart: S3 buckets (with
their objects, versions, metadata and tags), SQS queues (attributes, tags, messages), Kinesis
streams (shards, records with their sequence numbers, tags, consumers) and DynamoDB tables (items,
indexes, stream specification and stream records with their sequence numbers).

Synchronous and moto-bound: call it from a worker thread holding the moto limiter. The snapshot
is written once, on a clean stop, to ``<data_dir>/services/`` (``s3.pickle``, ``sqs.pickle``,
``kinesis.pickle``, ``dynamodb.pickle``), each file replaced atomically (write to a temporary
name, fsync, rename); a service whose snapshot cannot be written keeps its previous file and does
not stop the others from saving. A file that cannot be read back (a moto upgrade changed its
classes, say) is moved aside as ``*.unreadable`` and the service starts empty rather than refusing
to start.

S3 buckets are pickled whole: moto's ``FakeKey`` defines ``__getstate__`` for exactly this. SQS
queues hold locks, so a queue is rebuilt from its settable attributes, and only its messages are
pickled; a message that was in flight (received, not deleted) is visible again after the restart,
as if its visibility timeout had run out.

Kinesis streams and DynamoDB tables hold no locks and are pickled whole, so everything a stream
reader depends on comes back as it was: Kinesis shard ids and per-shard sequence numbers, a
table's stream ARN (its label), its stream shard id and each stream record's ``SequenceNumber``.
An event source mapping's checkpoint (``flocid.esm.store``) therefore still names the same
record after a restart, and its poller resumes right after it. Kinesis shard iterators encode
their position and keep working; DynamoDB Streams iterators live in moto's memory only (AWS's
expire after 15 minutes anyway): a reader asks for a new one after a restart.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

log = logging.getLogger("flocid.services")

S3_FILE = "s3.pickle"
SQS_FILE = "sqs.pickle"
KINESIS_FILE = "kinesis.pickle"
DYNAMODB_FILE = "dynamodb.pickle"
_FORMAT = 1
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


def _dumps(value: Any) -> bytes:
    """pickle, keeping every version of every S3 key: moto's ``_VersionedKeyStore`` is a dict
    whose ``items()`` yields only the latest version, which plain pickling would keep alone."""
    import copyreg
    import io

    from moto.s3.utils import _VersionedKeyStore

    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = copyreg.dispatch_table.copy()
    pickler.dispatch_table[_VersionedKeyStore] = _reduce_versioned
    pickler.dump(value)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        data = pickle.loads(path.read_bytes())  # noqa: S301 - our own file in our own data dir
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("unknown snapshot format")
        return data
    except Exception as exc:  # noqa: BLE001 - any unreadable snapshot is set aside, not fatal
        aside = path.with_name(path.name + ".unreadable")
        log.warning("cannot restore %s (%s); moved it to %s and starting empty", path, exc, aside)
        os.replace(path, aside)
        return None


def _count_keys() -> dict[str, int]:
    return {"buckets": 0, "objects": 0, "queues": 0, "messages": 0, "streams": 0, "records": 0,
            "tables": 0, "items": 0, "stream_records": 0}


def save(directory: Path) -> dict[str, int]:
    """Write the snapshot of every service; returns counts (buckets, objects, queues, messages,
    streams, records, tables, items, stream_records)."""
    directory.mkdir(parents=True, exist_ok=True)
    counts = _count_keys()
    for name, part in (("S3", _save_s3), ("SQS", _save_sqs), ("Kinesis", _save_kinesis),
                       ("DynamoDB", _save_dynamodb)):
        try:
            part(directory, counts)
        except Exception:  # noqa: BLE001 - one service's snapshot must not cost the others theirs
            log.exception("cannot write the %s snapshot to %s", name, directory)
    return counts


def _save_s3(directory: Path, counts: dict[str, int]) -> None:
    from moto.s3.models import s3_backends

    buckets: list[tuple[str, str, Any]] = []
    for account in list(s3_backends.keys()):
        for partition in list(s3_backends[account].keys()):
            for bucket in s3_backends[account][partition].buckets.values():
                buckets.append((account, partition, bucket))
                counts["buckets"] += 1
                counts["objects"] += len(bucket.keys)
    _write_atomic(directory / S3_FILE, _dumps({"format": _FORMAT, "buckets": buckets}))


def _save_sqs(directory: Path, counts: dict[str, int]) -> None:
    from moto.sqs.models import sqs_backends

    queues: list[dict[str, Any]] = []
    for account in list(sqs_backends.keys()):
        for region in list(sqs_backends[account].keys()):
            for queue in sqs_backends[account][region].queues.values():
                attributes = queue.attributes
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
    s3 = _read(directory / S3_FILE)
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
