"""The same job as an Apache Beam pipeline (DirectRunner by default; Dataflow, Flink, Spark).

    Create(spans of rows_per_shard inputs) -> Reshuffle -> ReadBatches (fixed batches of
    batch_size images; bad inputs to a side output) -> EncodeBatches (the export loaded
    once per worker process in DoFn.setup) -> WriteToParquetBatched / WriteToTFRecord

The rows and columns are the local runner's; which rows share a shard file is the
runner's choice. A Beam run is not resumable: the same command run again after a failed
or killed run deletes what that run left (shards, Beam's temporary files), says so, and
encodes every input again (a runner such as Dataflow retries failed work itself). A
finished output is refused without --overwrite, as for the local runner.
"""

from __future__ import annotations

import json
import logging
import math

import tensorflow as tf


def _quiet_import():
    """Imports Beam without its import-time notes about optional GCP client libraries."""
    loggers = [logging.getLogger(), logging.getLogger("apache_beam")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        import apache_beam
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return apache_beam


beam = _quiet_import()
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions  # noqa: E402
from apache_beam.utils import shared  # noqa: E402

from pipelines.encode import output  # noqa: E402
from pipelines.encode.config import EncodeConfig, EncodeError
from pipelines.encode.local import bad_input_error
from pipelines.encode.signatures import Encoder, ExportInfo
from pipelines.encode.sources import Source

log = logging.getLogger(__name__)
BAD = "bad"
SKIPPED_FILE = "skipped"  # .encode-state/skipped.jsonl: the bad inputs, one JSON per line


class ReadBatches(beam.DoFn):
    """A span (start, stop) of input positions -> Batches; bad inputs to the `bad` output
    (or, without skip_bad, an EncodeError naming the first one)."""

    def __init__(self, source: Source, batch_size: int, skip_bad: bool):
        self._source, self._batch_size, self._skip_bad = source, batch_size, skip_bad

    def process(self, span):
        start, stop = span
        for batch in self._source.batches(start, stop, self._batch_size):
            for bad in batch.bad:
                if not self._skip_bad:
                    raise bad_input_error(bad)
                Metrics.counter("bad_inputs").inc()
                yield beam.pvalue.TaggedOutput(BAD, {"id": bad["id"], "index": bad["index"],
                                                     "reason": bad["reason"]})
            if batch.ids:
                yield batch


class EncodeBatches(beam.DoFn):
    """Batch -> a pyarrow Table of its rows. The export is loaded in `setup`, once per
    worker process (shared by the DoFn instances of its threads)."""

    def __init__(self, model_path: str, log_likelihood: bool, reconstruction_error: bool, table_schema):
        self._model_path = model_path
        self._options = (log_likelihood, reconstruction_error)
        self._schema = table_schema
        self._shared = shared.Shared()
        self._encoder = None

    def setup(self):
        self._encoder = self._shared.acquire(lambda: Encoder(self._model_path, *self._options))

    def process(self, batch):
        outputs = self._encoder(batch.images)
        Metrics.counter("rows").inc(len(batch.ids))
        yield output.to_table(batch.indices, batch.ids, batch.labels, outputs, self._schema)


class Metrics:
    namespace = "vae_encode"

    @classmethod
    def counter(cls, name: str):
        return beam.metrics.Metrics.counter(cls.namespace, name)


def create_pipeline(pipeline: beam.Pipeline, config: EncodeConfig, out: str, source: Source,
                    info: ExportInfo, table_schema, num_shards: int) -> beam.Pipeline:
    """Adds the encode job's transforms to `pipeline` and returns it (nothing runs here)."""
    total, size = len(source), config.rows_per_shard
    spans = [(start, min(start + size, total)) for start in range(0, total, size)]
    results = (
        pipeline
        | "Spans" >> beam.Create(spans)
        | "Spread" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(ReadBatches(source, config.batch_size, config.skip_bad)).with_outputs(BAD, main="batches")
    )
    tables = results.batches | "Encode" >> beam.ParDo(
        EncodeBatches(info.path, config.log_likelihood, config.reconstruction_error, table_schema))
    prefix = output.join(out, output.PREFIX)
    if config.output_format == "parquet":
        _ = tables | "Write" >> beam.io.WriteToParquetBatched(
            prefix, schema=table_schema, file_name_suffix=".parquet", num_shards=num_shards)
    else:
        _ = (tables | "ToExamples" >> beam.FlatMap(output.to_examples)
             | "Write" >> beam.io.WriteToTFRecord(prefix, file_name_suffix=".tfrecord", num_shards=num_shards))
    _ = (results[BAD] | "BadAsJson" >> beam.Map(json.dumps)
         | "WriteBad" >> beam.io.WriteToText(output.join(out, output.STATE_DIR, SKIPPED_FILE),
                                             file_name_suffix=".jsonl", shard_name_template=""))
    return pipeline


# Beam's DirectRunner first tries to download the Prism runner binary from the internet,
# then falls back to the FnApiRunner. Unless told otherwise, go to the FnApiRunner at once:
# the same local runner, honouring --direct_num_workers and --direct_running_mode.
DEFAULT_RUNNER = "FnApiRunner"


def pipeline_options(beam_args) -> PipelineOptions:
    """Beam's options from pass-through flags; the local FnApiRunner unless --runner is given."""
    options = PipelineOptions(list(beam_args))
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    return options


def _user_error(err: BaseException) -> EncodeError | None:
    """The EncodeError a worker raised, from the runner's wrapped exception."""
    text = str(err)
    for line in text.splitlines():
        if "bad input " in line:
            return EncodeError(line[line.index("bad input "):].split(" [while running")[0].strip())
    return None


def run_beam(config: EncodeConfig, out: str, source: Source, info: ExportInfo, table_schema) -> list[dict]:
    """Runs the pipeline to completion; returns the shard records (each file's rows and
    sha256), the first carrying the skipped inputs.

    Raises:
        EncodeError: a bad input without skip_bad, or the pipeline failed.
    """
    earlier = [n for n in tf.io.gfile.listdir(out) if output.SHARD_RE.match(n.rstrip("/"))]
    if earlier:
        log.warning("%s holds %d shard file(s) of an earlier unfinished run; a Beam run does not resume: "
                    "they are deleted and every input is encoded again (the local runner resumes)",
                    out, len(earlier))
    output.remove_outputs(out, keep_state=True)  # not resumable: a rerun starts over
    num_shards = max(1, math.ceil(len(source) / config.rows_per_shard))
    options = pipeline_options(config.beam_args)
    log.info("running the encode pipeline on %s", options.view_as(StandardOptions).runner)
    pipeline = create_pipeline(beam.Pipeline(options=options), config, out, source, info,
                               table_schema, num_shards)
    try:
        pipeline.run().wait_until_finish()
    except Exception as err:  # runners wrap worker errors in their own types
        raise (_user_error(err) or EncodeError(f"the Beam pipeline failed: {err} (running the same command "
                                               f"again starts the Beam job over)")) from err
    extension = output.EXTENSIONS[config.output_format]
    names = sorted(tf.io.gfile.glob(output.join(out, f"{output.PREFIX}-*-of-{num_shards:05d}.{extension}")))
    records = [output.shard_record(out, name.rsplit("/", 1)[-1]) for name in names]
    skipped_path = output.join(out, output.STATE_DIR, SKIPPED_FILE + ".jsonl")
    skipped = []
    if tf.io.gfile.exists(skipped_path):
        with tf.io.gfile.GFile(skipped_path) as f:
            skipped = sorted((json.loads(line) for line in f if line.strip()), key=lambda b: b["index"])
    if records:
        records[0]["skipped"] = skipped
    return records
