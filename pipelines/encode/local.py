"""The local runner: one process, shard after shard, resumable after any interruption.

Shard k holds inputs [k * rows_per_shard, (k + 1) * rows_per_shard). A background thread
reads and checks the next batches while the main thread calls the signatures and writes,
so reading overlaps encoding. A finished shard is renamed into place and recorded in
`.encode-state/`; a run that finds a shard recorded (and its file intact) skips it.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
from collections.abc import Iterator

from pipelines.encode import output
from pipelines.encode.config import EncodeConfig, EncodeError
from pipelines.encode.signatures import Encoder
from pipelines.encode.sources import Source

_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(items: Iterator, depth: int = 4) -> Iterator:
    """Runs `items` in a background thread, `depth` items ahead of the consumer."""
    buffer: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as err:  # handed to the consumer, raised there
            put(_Failed(err))

    thread = threading.Thread(target=work, name="encode-reader", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _runs(shards: list[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 6] -> [[0, 1, 2], [5, 6]]."""
    runs: list[list[int]] = []
    for k in shards:
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def bad_input_error(bad: dict) -> EncodeError:
    return EncodeError(f"bad input {bad['id']}: {bad['reason']} (pass --skip-bad to skip bad inputs "
                       f"and record them in the manifest)")


class _Progress:
    """rows, rows/s and ETA on stderr (tqdm), or nothing."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit=" rows", unit_scale=True, file=sys.stderr,
                             desc="encode", mininterval=0.5, smoothing=0.1, dynamic_ncols=True)

    def update(self, rows: int) -> None:
        if self._bar is not None:
            self._bar.update(rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_local(config: EncodeConfig, source: Source, state: output.JobState, encoder: Encoder,
              table_schema) -> tuple[list[dict], int]:
    """Encodes every unfinished shard of `source` into `config.out`.

    Returns:
        The records of all shards, in order (each with its skipped inputs), and how many
        shards an earlier run had finished.

    Raises:
        EncodeError: a bad input without `config.skip_bad`.
    """
    total = len(source)
    size = config.rows_per_shard
    count = max(1, math.ceil(total / size))
    names = [output.shard_name(k, count, config.output_format) for k in range(count)]
    records = {k: r for k in range(count) if (r := state.finished(names[k])) is not None}
    done_rows = sum(min(size, total - k * size) for k in records)
    todo = [k for k in range(count) if k not in records]
    resumed = len(records)

    def read() -> Iterator:
        """(shard, Batch) of the unfinished shards, and (shard, None) at each one's end.

        Consecutive shards are read in one pass (a reader of a TFRecord file cannot seek:
        starting each shard anew would read the file again up to it)."""
        for run in _runs(todo):
            k = run[0]
            for batch in source.batches(run[0] * size, min((run[-1] + 1) * size, total), config.batch_size):
                while batch.indices or batch.bad:
                    end = min((k + 1) * size, total)
                    part, batch = batch.split(end)
                    yield k, part
                    if not (batch.indices or batch.bad):
                        break
                    yield k, None  # the shard is complete
                    k += 1
            for shard in range(k, run[-1] + 1):  # the last (and any empty) shards of the run
                yield shard, None

    progress = _Progress(total, done_rows, config.progress)
    tables, skipped = [], []
    try:
        for k, batch in prefetch(read()):
            if batch is None:
                record = output.write_shard(config.out, names[k], tables, table_schema)
                record.update(first_index=k * size, last_index=min((k + 1) * size, total) - 1, skipped=skipped)
                state.finish(record)
                records[k] = record
                tables, skipped = [], []
                continue
            if batch.bad and not config.skip_bad:
                raise bad_input_error(batch.bad[0])
            skipped += [{"id": b["id"], "index": b["index"], "reason": b["reason"]} for b in batch.bad]
            if batch.ids:
                outputs = encoder(batch.images)
                tables.append(output.to_table(batch.indices, batch.ids, batch.labels, outputs, table_schema))
            progress.update(len(batch.ids) + len(batch.bad))
    finally:
        progress.close()
    return [records[k] for k in range(count)], resumed
