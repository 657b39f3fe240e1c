"""What a job writes: the row schema, Parquet/TFRecord shards, the job state, the manifest.

    <out>/part-00000-of-00007.parquet ...   one row per encoded input
    <out>/_manifest.json                    written last: the output is complete
    <out>/.encode-state/job.json            while unfinished: the job's identity
    <out>/.encode-state/part-*.json         while unfinished: each finished shard

Everything but the shards starts with "_" or ".", names that Parquet readers (pyarrow,
pandas, Spark, DuckDB) skip, so the folder itself reads as one dataset. A shard is
written under a hidden temporary name and renamed when complete; then its record goes
to `.encode-state/`. Files go through tf.io.gfile (local paths, gs://...).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from core import files
from pipelines.encode.signatures import PREDICTED_LABEL, RECONSTRUCTION_ERROR
from serving import contract as C
from serving.layout import join

ID, INDEX, LABEL = "id", "index", "label"
MANIFEST_FILE = "_manifest.json"
# Before the rename: a Parquet reader given the folder tripped over it. Such an output
# is recognised (finished: replaced only with --overwrite) and removed with the rest.
LEGACY_MANIFEST_FILE = "manifest.json"
STATE_DIR = ".encode-state"
JOB_FILE = "job.json"
MANIFEST_VERSION = 1
EXTENSIONS = {"parquet": "parquet", "tfrecord": "tfrecord"}
SHARD_RE = re.compile(r"part-\d{5}-of-\d{5}\.(parquet|tfrecord)$")
PREFIX = "part"  # Beam's file_path_prefix too: part-SSSSS-of-NNNNN.<ext>


def shard_name(index: int, count: int, output_format: str) -> str:
    return f"{PREFIX}-{index:05d}-of-{count:05d}.{EXTENSIONS[output_format]}"


# === Rows ===
def schema(latent_dim: int, columns: list[str], metadata: dict | None = None,
           num_classes: int | None = None) -> pa.Schema:
    """id, index, label, z_mean[D], z_log_var[D] (+ log_likelihood, reconstruction_error;
    + probabilities[K], predicted_label for an export with a classifier)."""
    fields = [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(INDEX, pa.int64(), nullable=False),
        pa.field(LABEL, pa.int64()),
        pa.field(C.Z_MEAN, pa.list_(pa.float32(), latent_dim), nullable=False),
        pa.field(C.Z_LOG_VAR, pa.list_(pa.float32(), latent_dim), nullable=False),
    ]
    fields += [pa.field(key, pa.float32(), nullable=False)
               for key in (C.LOG_LIKELIHOOD_KEY, RECONSTRUCTION_ERROR) if key in columns]
    if C.PROBABILITIES in columns:
        fields += [pa.field(C.PROBABILITIES, pa.list_(pa.float32(), num_classes), nullable=False),
                   pa.field(PREDICTED_LABEL, pa.int64(), nullable=False)]
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    return pa.schema(fields, metadata=meta or None)


def to_table(indices, ids, labels, outputs: dict[str, np.ndarray], table_schema: pa.Schema) -> pa.Table:
    """One row per encoded input, columns as in `schema`."""
    columns = {ID: pa.array(ids, pa.string()), INDEX: pa.array(indices, pa.int64()),
               LABEL: pa.array(labels, pa.int64())}
    for field in table_schema:
        if field.name in columns:
            continue
        if pa.types.is_integer(field.type):
            columns[field.name] = pa.array(np.asarray(outputs[field.name], np.int64), field.type)
            continue
        values = np.ascontiguousarray(outputs[field.name], np.float32)
        if pa.types.is_fixed_size_list(field.type):
            columns[field.name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)),
                                                                    field.type.list_size)
        else:
            columns[field.name] = pa.array(values)
    return pa.table([columns[f.name] for f in table_schema], schema=table_schema)


def to_examples(table: pa.Table) -> list[bytes]:
    """Rows as serialized tf.train.Example (the TFRecord output): same names as the columns."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    examples = []
    for row in range(table.num_rows):
        feature = {}
        for name, values in columns.items():
            value = values[row]
            if value is None:
                continue
            if isinstance(value, str):
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
            elif isinstance(value, int):
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
            else:
                value = value if isinstance(value, list) else [value]
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
        examples.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return examples


# === Files ===
def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def shard_record(out: str, name: str) -> dict:
    """file, rows, bytes and sha256 of a finished shard file."""
    path = join(out, name)
    if name.endswith(".parquet"):
        with tf.io.gfile.GFile(path, "rb") as f:
            rows = pq.ParquetFile(pa.BufferReader(f.read())).metadata.num_rows
    else:
        rows = sum(1 for _ in tf.data.TFRecordDataset(path))
    return {"file": name, "rows": int(rows), "bytes": int(tf.io.gfile.stat(path).length),
            "sha256": sha256_of(path)}


def write_shard(out: str, name: str, tables: list[pa.Table], table_schema: pa.Schema) -> dict:
    """Writes the rows of `tables` as shard `name`: a hidden temporary file, then a rename."""
    table = pa.concat_tables(tables) if tables else table_schema.empty_table()
    temporary = join(out, f".{name}.{uuid.uuid4().hex[:8]}.tmp")  # a retried Beam bundle may write it too
    if name.endswith(".parquet"):
        buffer = pa.BufferOutputStream()
        # Dictionaries and statistics suit the label and the ids, not the float vectors:
        # for those they cost time (7x) and make larger files.
        pq.write_table(table, buffer, use_dictionary=[LABEL], write_statistics=[ID, INDEX, LABEL])
        data = buffer.getvalue()
        with tf.io.gfile.GFile(temporary, "wb") as f:
            f.write(data.to_pybytes())
        record = {"file": name, "rows": table.num_rows, "bytes": data.size,
                  "sha256": hashlib.sha256(data).hexdigest()}
    else:
        with tf.io.TFRecordWriter(temporary) as writer:
            for example in to_examples(table):
                writer.write(example)
        record = shard_record(out, os.path.basename(temporary)) | {"file": name}
    tf.io.gfile.rename(temporary, join(out, name), overwrite=True)
    return record


def read_json(path: str) -> dict | None:
    return files.read_json(path, default=None)


def write_json(path: str, value: dict) -> None:
    """Writes JSON atomically (keys in the order given): readers never see half a file."""
    files.write_json_atomic(path, value, sort_keys=False)


# === Job state ===
class JobState:
    """The `.encode-state/` folder of an unfinished job: its identity and finished shards."""

    def __init__(self, out: str):
        self.out = out
        self.folder = join(out, STATE_DIR)

    def job(self) -> dict | None:
        return read_json(join(self.folder, JOB_FILE))

    def start(self, identity: dict) -> None:
        tf.io.gfile.makedirs(self.folder)
        write_json(join(self.folder, JOB_FILE), identity)

    def finished(self, name: str) -> dict | None:
        """The record of shard `name` if it was finished and its file is still intact."""
        record = read_json(join(self.folder, name + ".json"))
        path = join(self.out, name)
        if record is None or not tf.io.gfile.exists(path):
            return None
        if tf.io.gfile.stat(path).length != record["bytes"] or sha256_of(path) != record["sha256"]:
            return None
        return record

    def finish(self, record: dict) -> None:
        write_json(join(self.folder, record["file"] + ".json"), record)

    def clear(self) -> None:
        if tf.io.gfile.exists(self.folder):
            tf.io.gfile.rmtree(self.folder)


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Which inputs go to which shard, and which shards an earlier run finished.

    Shard k holds inputs [k * size, (k + 1) * size); an empty input still gets one (empty)
    shard. Both runners follow it, so either resumes the other's unfinished output.
    """

    size: int
    total: int
    names: list[str]
    finished: dict[int, dict]  # shard index -> record, for shards recorded with intact files
    todo: list[int]

    @classmethod
    def of(cls, config, total: int, state: JobState) -> ShardPlan:
        size = config.rows_per_shard
        count = max(1, math.ceil(total / size))
        names = [shard_name(k, count, config.output_format) for k in range(count)]
        finished = {k: r for k in range(count) if (r := state.finished(names[k])) is not None}
        return cls(size, total, names, finished, [k for k in range(count) if k not in finished])

    def span(self, k: int) -> tuple[int, int]:
        """(first input, one past the last) of shard k."""
        return k * self.size, min((k + 1) * self.size, self.total)

    def finished_rows(self) -> int:
        return sum(stop - start for start, stop in map(self.span, self.finished))


def skipped_entry(bad: dict) -> dict:
    """A bad input as the manifest's `skipped` lists it."""
    return {"id": bad["id"], "index": bad["index"], "reason": bad["reason"]}


def finish_shard(state: JobState, plan: ShardPlan, k: int, tables: list[pa.Table], table_schema: pa.Schema,
                 skipped: list[dict]) -> dict:
    """Writes shard k of `plan` into the job's folder and records it; returns its record."""
    record = write_shard(state.out, plan.names[k], tables, table_schema)
    start, stop = plan.span(k)
    record.update(first_index=start, last_index=stop - 1, skipped=skipped)
    state.finish(record)
    return record


def is_ours(name: str) -> bool:
    """Whether a file in an output folder was written by an encode job."""
    name = name.rstrip("/")
    manifests = (MANIFEST_FILE, LEGACY_MANIFEST_FILE)
    temporary_manifest = name.endswith(".tmp") and any(name.startswith(f".{m}.") for m in manifests)
    return (name in manifests or temporary_manifest or name == STATE_DIR or SHARD_RE.match(name) is not None
            or (name.startswith(f".{PREFIX}-") and name.endswith(".tmp")) or name.startswith("beam-temp-"))


def remove_outputs(out: str, keep_state: bool = False, only_beam_temporary: bool = False) -> None:
    """Deletes what encode jobs wrote in `out` (nothing else); with `only_beam_temporary`,
    just the `beam-temp-*` folders a killed Beam run leaves."""
    for name in tf.io.gfile.listdir(out):
        name = name.rstrip("/")
        if not is_ours(name) or (keep_state and name == STATE_DIR):
            continue
        if only_beam_temporary and not name.startswith("beam-temp-"):
            continue
        path = join(out, name)
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)
