"""The local runner: one process, shard after shard, resumable after any interruption.

Shard k holds inputs [k * rows_per_shard, (k + 1) * rows_per_shard). Three stages overlap,
joined by bounded queues, so the signature calls do not wait on reading or writing:

    reader thread    reads and checks batches, and makes their images tensors (`prefetch`)
    calling threads  ENCODE_CALLS signature calls in flight (one call alone leaves the
                     cores idle between its small ops); results are taken in input order
    writer thread    rows to Arrow tables, tables to shard files with their sha256

A finished shard is renamed into place and recorded in `.encode-state/`; a run that finds
a shard recorded (and its file intact) skips it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
import queue
import sys
import threading
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from pipelines.encode import output
from pipelines.encode.config import EncodeConfig, EncodeError
from pipelines.encode.signatures import Encoder
from pipelines.sources.base import Source

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


class _InOrder:
    """Runs `handle(item)` for each item put, in order, in one background thread.

    The queue is bounded (`put` waits when the thread is behind). An error in the thread
    is raised by the next `put` or by `close`; later items are then dropped."""

    def __init__(self, handle: Callable, depth: int, name: str):
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, args=(handle,), name=name, daemon=True)
        self._thread.start()

    def _work(self, handle: Callable) -> None:
        while (item := self._queue.get()) is not _END:
            if self._error is None:
                try:
                    handle(item)
                except BaseException as err:  # raised in the caller's thread
                    self._error = err

    def put(self, item) -> None:
        self._check()
        self._queue.put(item)

    def close(self, check: bool = True) -> None:
        """Waits until every item put is handled; raises the thread's error if `check`."""
        self._queue.put(_END)
        self._thread.join()
        if check:
            self._check()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error


class _ShardWriter:
    """Encoded rows, in input order, into shard files (called in the writer thread).

    `rows(batch, outputs)` adds a batch's rows and bad inputs to the shards they belong to;
    `advance(position)` writes every unfinished shard that ends at or before `position`
    (all its inputs have been handed over), empty ones included.
    """

    def __init__(self, plan: output.ShardPlan, state: output.JobState, table_schema, records: dict):
        self._plan, self._state, self._schema, self._records = plan, state, table_schema, records
        self._pending = collections.deque(plan.todo)  # unwritten shards, ascending
        self._current: int | None = None  # the shard whose rows are in _tables
        self._tables: list = []
        self._skipped: list[dict] = []

    def handle(self, message: tuple) -> None:
        kind, *args = message
        (self.rows if kind == "rows" else self.advance)(*args)

    def rows(self, batch, outputs: dict[str, np.ndarray] | None) -> None:
        while batch.indices or batch.bad:
            first = min(batch.indices[:1] + [b["index"] for b in batch.bad[:1]])
            k = first // self._plan.size
            start, stop = self._plan.span(k)
            self.advance(start)
            self._current = k
            part, batch = batch.split(stop)
            count = len(part.ids)
            if count:
                self._tables.append(output.to_table(part.indices, part.ids, part.labels,
                                                    {key: v[:count] for key, v in outputs.items()}, self._schema))
                outputs = {key: v[count:] for key, v in outputs.items()}
            self._skipped += [output.skipped_entry(b) for b in part.bad]

    def advance(self, position: int) -> None:
        while self._pending and self._plan.span(self._pending[0])[1] <= position:
            k = self._pending.popleft()
            tables, skipped = (self._tables, self._skipped) if k == self._current else ([], [])
            self._records[k] = output.finish_shard(self._state, self._plan, k, tables, self._schema, skipped)
            if k == self._current:
                self._current, self._tables, self._skipped = None, [], []


ENCODE_CALLS = 2  # signature calls in flight
READ_AHEAD_BYTES = 64 * 2**20  # images read ahead of the calls (at least 2 batches, at most 8)


def run_local(config: EncodeConfig, source: Source, state: output.JobState,
              encoder: Encoder | concurrent.futures.Future, table_schema) -> tuple[list[dict], int]:
    """Encodes every unfinished shard of `source` into `config.out`.

    Args:
        encoder: the export's Encoder, or a Future of it (loading while reading starts).

    Returns:
        The records of all shards, in order (each with its skipped inputs), and how many
        shards an earlier run had finished.

    Raises:
        EncodeError: a bad input without `config.source.skip_bad` (the shards before it are written).
    """
    plan = output.ShardPlan.of(config, len(source), state)
    records = dict(plan.finished)

    def read() -> Iterator:
        """(Batch, its images as a tensor) of the unfinished shards, and after each run of
        consecutive unfinished shards the position where it ends.

        Consecutive shards are read in one pass (a reader of a TFRecord file cannot seek:
        starting each shard anew would read the file again up to it). The tensor is made
        here, so the copy is not on the calling threads."""
        for run in _runs(plan.todo):
            stop = plan.span(run[-1])[1]
            for batch in source.batches(plan.span(run[0])[0], stop, config.batch_size):
                yield batch, tf.constant(batch.images)
            yield stop

    def encode(images) -> dict[str, np.ndarray]:
        ready = encoder.result() if isinstance(encoder, concurrent.futures.Future) else encoder
        return ready(images)

    batch_bytes = config.batch_size * 4 * math.prod(source.image_shape)
    depth = max(2, min(8, READ_AHEAD_BYTES // max(1, batch_bytes)))
    writer = _InOrder(_ShardWriter(plan, state, table_schema, records).handle,
                      depth=2 * ENCODE_CALLS, name="encode-writer")
    calls = concurrent.futures.ThreadPoolExecutor(ENCODE_CALLS, thread_name_prefix="encode-call")
    progress = _Progress(plan.total, plan.finished_rows(), config.progress)
    in_flight: collections.deque = collections.deque()  # (Batch, Future of outputs) or (None, position)

    def hand_over() -> None:
        """The oldest batch in flight (its rows, once encoded) or position to the writer."""
        batch, result = in_flight.popleft()
        if batch is None:
            writer.put(("advance", result))
            return
        writer.put(("rows", batch, result.result() if result is not None else None))
        progress.update(len(batch.ids) + len(batch.bad))

    try:
        for item in prefetch(read(), depth):
            if not isinstance(item, tuple):
                in_flight.append((None, item))
                continue
            batch, images = item
            if batch.bad and not config.source.skip_bad:
                bad = batch.bad[0]
                before, _ = batch.split(bad["index"])  # the rows before it are written
                while in_flight:
                    hand_over()
                if before.ids:
                    writer.put(("rows", before, encode(images[:len(before.ids)])))
                writer.put(("advance", bad["index"]))
                raise bad_input_error(bad)
            in_flight.append((batch, calls.submit(encode, images) if batch.ids else None))
            while len(in_flight) > ENCODE_CALLS:
                hand_over()
        while in_flight:
            hand_over()
    except BaseException:
        calls.shutdown(wait=True, cancel_futures=True)
        writer.close(check=False)  # the shards handed over whole are still written
        progress.close()
        raise
    calls.shutdown()
    writer.close()
    progress.close()
    return [records[k] for k in range(len(plan.names))], len(plan.finished)
