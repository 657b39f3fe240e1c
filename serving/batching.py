"""Server-side batching: concurrent requests for the same signature run as one call.

Semantics follow TF Serving's `BatchingParameters`: a batch runs when it holds
`max_batch_size` rows or when its oldest request has waited `batch_timeout_micros` (0: as
soon as fewer than `num_batch_threads` batches are running, so batches form from the
requests that arrived while the previous batch ran); past `max_enqueued_batches` full
batches of queued rows, new requests get UNAVAILABLE. Row signatures are concatenated
along axis 0 (M2's `classify` too; a label model's row signatures carry `labels` with the
same rows); `generate` requests run together through the export's `generate_batch`
signature, which draws the same latents. Requests that cannot be joined run alone, unbatched:
a label model's `generate` (one image per label, and no `generate_batch` in its export) and a
half model's `complete` (a seed per request).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from core.config import ConfigBase, read_config_file, require
from serving import contract as C
from serving.errors import RequestError
from serving.servable import Prepared, Servable

log = logging.getLogger(__name__)
_FIELD = re.compile(r"(\w+)\s*(?::\s*(-?\w+)|\{\s*value\s*:\s*(-?\w+)\s*\})")


@dataclasses.dataclass(frozen=True)
class BatchingOptions(ConfigBase):
    """TF Serving's batching knobs (the ones that apply here).

    Args:
        max_batch_size: rows per batch, across requests (at most the contract's MAX_BATCH).
        batch_timeout_micros: how long the oldest request may wait for a fuller batch.
        max_enqueued_batches: queue limit, in batches of max_batch_size rows.
        num_batch_threads: batches that run at the same time, per signature; None (the
            default, as in TF Serving): one per CPU core this process may run on.
    """

    max_batch_size: int = 256
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 64
    num_batch_threads: int | None = None

    def __post_init__(self) -> None:
        require(self, "max_batch_size", 1 <= self.max_batch_size <= C.MAX_BATCH, f"must be within [1, {C.MAX_BATCH}]")
        require(self, "batch_timeout_micros", self.batch_timeout_micros >= 0, "must be >= 0")
        require(self, "max_enqueued_batches", self.max_enqueued_batches >= 1, "must be >= 1")
        require(self, "num_batch_threads", self.num_batch_threads is None or self.num_batch_threads >= 1,
                "must be >= 1")

    @property
    def batch_threads(self) -> int:
        """`num_batch_threads`, or the CPU cores this process may run on when it is None
        (read when a queue starts, so a server confined with `--cpus` counts its own)."""
        return self.num_batch_threads or len(os.sched_getaffinity(0))

    @classmethod
    def from_text(cls, text: str) -> BatchingOptions:
        """Parses a `BatchingParameters` text proto (`max_batch_size { value: 32 }`).

        Raises:
            ConfigError: a value is not an integer or out of range (the message names it).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, int] = {}
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            for name, plain, wrapped in _FIELD.findall(line):
                if name in known:
                    values[name] = plain or wrapped
                else:
                    log.warning("batching parameter %s is not used by the local server", name)
        return cls.from_dict(values)

    @classmethod
    def from_file(cls, path: str | Path) -> BatchingOptions:
        """Parses a `BatchingParameters` text proto file.

        Raises:
            ConfigError: the file cannot be read, or a value is invalid (named with the file).
        """
        return read_config_file(path, "batching parameters file", cls.from_text)


@dataclasses.dataclass(eq=False)
class _Task:
    servable: Servable
    prepared: Prepared
    is_active: Callable[[], bool]
    enqueued: float = dataclasses.field(default_factory=time.monotonic)
    wake: threading.Event = dataclasses.field(default_factory=threading.Event)
    done: bool = False
    result: dict[str, np.ndarray] | None = None
    error: RequestError | None = None


class _Queue:
    """One signature kind's queue. The request threads run the batches themselves.

    Up to `num_batch_threads` submitting threads lead at a time: a leader collects a batch
    from the head of the queue (TF Serving's size and timeout rules), runs it and wakes the
    threads of its tasks; when it stops leading with work left, it wakes the thread of the
    next queued task, which leads in turn. No batch thread sits in between: a request that
    arrives alone runs at once on its own thread, and only threads with news are woken.
    """

    def __init__(self, name: str, options: BatchingOptions, run: Callable[[list[_Task]], None]):
        self.name = name
        self.options = options
        self._run = run
        self._tasks: deque[_Task] = deque()
        self._rows = 0
        self._leaders = 0
        self._threads = options.batch_threads
        self._lock = threading.Lock()
        self._filled = threading.Condition(self._lock)  # a leader waits here for a fuller batch
        self._stopped = False
        self.batches_run = 0
        self.tasks_run = 0
        self.batches_split = 0  # batches that failed and ran again one task at a time

    def submit(self, task: _Task) -> None:
        """Queues `task` and returns once it has run (its `result` or `error` is set).

        Raises:
            RequestError: UNAVAILABLE when the queue is full or the server is stopping.
        """
        limit = self.options.max_enqueued_batches * self.options.max_batch_size
        with self._lock:
            if self._stopped:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            if self._rows + task.prepared.rows > limit and self._tasks:
                raise RequestError(
                    grpc.StatusCode.UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full",
                )
            self._tasks.append(task)
            self._rows += task.prepared.rows
            self._filled.notify()
        while True:
            with self._lock:
                if task.done:
                    return
                lead = self._leaders < self._threads and bool(self._tasks)
                self._leaders += lead
            if lead:
                self._lead(task)
            else:
                task.wake.wait()
                task.wake.clear()

    def stop(self) -> None:
        """Refuses new tasks; queued ones still run on their own threads."""
        with self._lock:
            self._stopped = True
            self._filled.notify_all()

    def _pick(self) -> tuple[list[_Task], int]:
        first = self._tasks[0]
        batch, rows = [first], first.prepared.rows
        for task in list(self._tasks)[1:]:
            if task.servable is first.servable and rows + task.prepared.rows <= self.options.max_batch_size:
                batch.append(task)
                rows += task.prepared.rows
        return batch, rows

    def _collect(self) -> list[_Task]:
        """Takes the next batch off the queue, waiting for the timeout (lock held)."""
        timeout = self.options.batch_timeout_micros / 1e6
        while True:
            if not self._tasks:  # another leader took them while this one waited
                return []
            batch, rows = self._pick()
            remaining = batch[0].enqueued + timeout - time.monotonic()
            if rows >= self.options.max_batch_size or remaining <= 0 or self._stopped:
                break
            self._filled.wait(remaining)
        for task in batch:
            self._tasks.remove(task)
        self._rows -= rows
        return batch

    def _lead(self, own: _Task) -> None:
        """Runs one batch from the head of the queue (the caller counted itself a leader)."""
        with self._lock:
            batch = self._collect()
        ran = self._run_batch(batch) if batch else 0
        with self._lock:
            self.batches_run += ran > 0
            self.tasks_run += ran
            self._leaders -= 1
            for task in batch:
                task.done = True
                if task is not own:
                    task.wake.set()
            if self._tasks and (own.done or own not in self._tasks):
                self._tasks[0].wake.set()  # its thread checks whether to lead

    def _run_batch(self, batch: list[_Task]) -> int:
        """Runs the live tasks of a batch; returns how many ran. Never raises.

        A batch that fails runs again one task at a time, so that an error stays with the
        request that caused it and the others in the batch still get their results.
        """
        live = [t for t in batch if t.is_active()]
        for task in batch:
            if task not in live:
                task.error = RequestError(grpc.StatusCode.CANCELLED, "request ended while queued")
        if not live:
            return 0
        try:
            self._run(live)
            return len(live)
        except Exception as err:
            if len(live) == 1:
                live[0].error = self._request_error(err)
                return 1
        self.batches_split += 1
        for task in live:
            task.result = None
            try:
                self._run([task])
            except Exception as err:
                task.error = self._request_error(err)
        return len(live)

    def _request_error(self, err: Exception) -> RequestError:
        if isinstance(err, RequestError):
            return err
        log.error("batch of %s failed", self.name, exc_info=err)  # a bug: the caller gets INTERNAL
        return RequestError(grpc.StatusCode.INTERNAL, f"batch failed: {err}")


class BatchScheduler:
    """Routes prepared requests to per-signature queues; `None` from `submit` means "run it yourself".

    Args:
        options: the batching knobs.
    """

    def __init__(self, options: BatchingOptions):
        self.options = options
        self._queues = {
            key: _Queue(key, options, run)
            for key, run in [(k, self._run_rows) for k in C.ANY_ROW_SIGNATURES] + [(C.GENERATE, self._run_generate)]
        }

    @staticmethod
    def batch_key(servable: Servable, prepared: Prepared) -> str | None:
        """The queue a request can share, or None when it must run alone (e.g. a label
        model's generate, which takes labels instead of num_samples and has no
        generate_batch to run through)."""
        name = prepared.signature.name
        if name in C.ANY_ROW_SIGNATURES:
            return name
        if C.LABELS in prepared.inputs:
            return None
        is_generate = name in (C.GENERATE, C.DEFAULT_SIGNATURE) and np.ndim(prepared.inputs.get(C.NUM_SAMPLES)) == 0
        if is_generate and C.NUM_SAMPLES in prepared.inputs and C.GENERATE_BATCH in servable.signatures:
            return C.GENERATE
        return None

    def submit(self, servable: Servable, prepared: Prepared, is_active: Callable[[], bool]) -> dict | None:
        """Runs `prepared` in a batch and returns its outputs (all of them), or None.

        Raises:
            RequestError: the batch failed, or the queue is full (UNAVAILABLE).
        """
        key = self.batch_key(servable, prepared)
        if key is None:
            return None
        task = _Task(servable, prepared, is_active)
        self._queues[key].submit(task)
        if task.error is not None:
            raise task.error
        return task.result

    def stats(self) -> dict[str, tuple[int, int]]:
        """(batches run, requests run) per queue, for tests and logs."""
        return {k: (q.batches_run, q.tasks_run) for k, q in self._queues.items()}

    def split_batches(self) -> dict[str, int]:
        """Batches per queue that failed and ran again one request at a time."""
        return {k: q.batches_split for k, q in self._queues.items()}

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """(queued requests, queued rows) per queue, now (the metrics page reads it)."""
        return {k: (len(q._tasks), q._rows) for k, q in self._queues.items()}

    def stop(self) -> None:
        for queue in self._queues.values():
            queue.stop()

    # === Batch runners ===
    @staticmethod
    def _run_rows(tasks: list[_Task]) -> None:
        signature = tasks[0].prepared.signature
        if len(tasks) == 1:
            tasks[0].result = tasks[0].servable.run(signature, tasks[0].prepared.inputs)
            return
        inputs = {k: np.concatenate([t.prepared.inputs[k] for t in tasks]) for k in signature.inputs}
        outputs = tasks[0].servable.run(signature, inputs)
        _split(tasks, outputs, [t.prepared.rows for t in tasks])

    @staticmethod
    def _run_generate(tasks: list[_Task]) -> None:
        servable = tasks[0].servable
        if len(tasks) == 1:
            tasks[0].result = servable.run(tasks[0].prepared.signature, tasks[0].prepared.inputs)
            return
        counts = [int(t.prepared.inputs[C.NUM_SAMPLES]) for t in tasks]
        inputs = {
            C.NUM_SAMPLES: np.asarray(counts, np.int32),
            C.SEED: np.stack([t.prepared.inputs[C.SEED] for t in tasks]).astype(np.int64),
            C.TEMPERATURE: np.asarray([t.prepared.inputs[C.TEMPERATURE] for t in tasks], np.float32),
        }
        outputs = servable.run(servable.signatures[C.GENERATE_BATCH], inputs)
        _split(tasks, outputs, counts)


def _split(tasks: list[_Task], outputs: dict[str, np.ndarray], rows: list[int]) -> None:
    bounds = np.cumsum([0, *rows])
    for task, start, stop in zip(tasks, bounds[:-1], bounds[1:]):
        task.result = {k: v[start:stop] for k, v in outputs.items()}
