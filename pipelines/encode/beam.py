"""The same job as an Apache Beam pipeline (DirectRunner by default; Dataflow, Flink, Spark).

    Create(unfinished shards: index, first and last input) -> Reshuffle -> EncodeShard
    (reads the shard's inputs in batches of batch_size, encodes them with the export
    loaded once per worker process in DoFn.setup, writes the shard file and records it
    in `.encode-state/`)

Shard k holds inputs [k * rows_per_shard, (k + 1) * rows_per_shard), as with the local
runner, and the files are the same. Each shard is written whole (a temporary name, then a
rename) and recorded, so a Beam run resumes like a local one: the same command run again
after a failed or killed run encodes only the shards not recorded yet, with either runner.
A runner that retries a bundle rewrites the same shard file with the same rows. A
finished output is refused without --overwrite, as for the local runner.
"""

from __future__ import annotations

import logging


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
from pipelines.sources.base import Source

log = logging.getLogger(__name__)


class EncodeShard(beam.DoFn):
    """(k, start, stop) -> shard k written to `out` and recorded in its job state; yields the
    shard's record. A bad input raises an EncodeError naming it, or with skip_bad goes to
    the record's `skipped`. The export is loaded in `setup`, once per worker process
    (shared by the DoFn instances of its threads)."""

    def __init__(self, config: EncodeConfig, out: str, source: Source, model_path: str, table_schema,
                 plan: output.ShardPlan):
        self._config, self._out, self._source, self._model_path = config, out, source, model_path
        self._schema, self._plan = table_schema, plan
        self._shared = shared.Shared()
        self._encoder = None

    def setup(self):
        options = (self._config.log_likelihood, self._config.reconstruction_error)
        self._encoder = self._shared.acquire(lambda: Encoder(self._model_path, *options))

    def process(self, span):
        k, start, stop = span
        tables, skipped = [], []
        for batch in self._source.batches(start, stop, self._config.batch_size):
            for bad in batch.bad:
                if not self._config.source.skip_bad:
                    raise bad_input_error(bad)
                Metrics.counter("bad_inputs").inc()
                skipped.append(output.skipped_entry(bad))
            if batch.ids:
                outputs = self._encoder(batch.images)
                tables.append(output.to_table(batch.indices, batch.ids, batch.labels, outputs, self._schema))
                Metrics.counter("rows").inc(len(batch.ids))
        yield output.finish_shard(output.JobState(self._out), self._plan, k, tables, self._schema, skipped)


class Metrics:
    namespace = "vae_encode"

    @classmethod
    def counter(cls, name: str):
        return beam.metrics.Metrics.counter(cls.namespace, name)


def create_pipeline(pipeline: beam.Pipeline, config: EncodeConfig, out: str, source: Source,
                    info: ExportInfo, table_schema, plan: output.ShardPlan) -> beam.Pipeline:
    """Adds the encode job's transforms for the shards `plan.todo` to `pipeline` and returns
    it (nothing runs here)."""
    spans = [(k, *plan.span(k)) for k in plan.todo]
    _ = (
        pipeline
        | "Shards" >> beam.Create(spans)
        | "Spread" >> beam.Reshuffle()
        | "EncodeShard" >> beam.ParDo(EncodeShard(config, out, source, info.path, table_schema, plan))
    )
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


def run_beam(config: EncodeConfig, out: str, source: Source, info: ExportInfo, table_schema,
             state: output.JobState) -> tuple[list[dict], int]:
    """Encodes every unfinished shard of `source` into `out` on Beam.

    Returns:
        The records of all shards, in order (each with its skipped inputs), and how many
        shards an earlier run had finished.

    Raises:
        EncodeError: a bad input without skip_bad (the shards finished before it stay
            recorded), or the pipeline failed.
    """
    plan = output.ShardPlan.of(config, len(source), state)
    if plan.todo:
        options = pipeline_options(config.beam_args)
        log.info("running the encode pipeline on %s (%d of %d shards to encode)",
                 options.view_as(StandardOptions).runner, len(plan.todo), len(plan.names))
        pipeline = create_pipeline(beam.Pipeline(options=options), config, out, source, info, table_schema, plan)
        try:
            pipeline.run().wait_until_finish()
        except Exception as err:  # runners wrap worker errors in their own types
            raise (_user_error(err) or EncodeError(
                f"the Beam pipeline failed: {err} (the shards it finished are kept: running the same "
                f"command again encodes the rest)")) from err
    records = dict(plan.finished)
    for k in plan.todo:
        records[k] = state.finished(plan.names[k])
        if records[k] is None:
            raise EncodeError(f"the Beam pipeline finished without writing {plan.names[k]}; running the "
                              f"same command again encodes the missing shards")
    return [records[k] for k in range(len(plan.names))], len(plan.finished)
