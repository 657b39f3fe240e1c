"""Server-side batching: parameters, identical results under concurrency, queue limits."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_testlib import IMAGE_SHAPE, export_strict_encoder, start_server, wait_for

from core.config import ConfigError
from serving import contract as C
from serving.batching import BatchingOptions, _Queue, _Task
from serving.client import VAEClient
from serving.errors import RequestError

PARAMETERS_FILE = Path(__file__).resolve().parents[2] / "serving" / "batching_parameters.txt"


def test_parameters_file_parses_as_tf_serving_text():
    options = BatchingOptions.from_file(PARAMETERS_FILE)
    assert options.max_batch_size <= C.MAX_BATCH and options.batch_threads >= 1
    parsed = BatchingOptions.from_text(
        "max_batch_size { value: 32 }  # rows\nbatch_timeout_micros: 500\nallowed_batch_sizes: 8\n"
    )
    assert (parsed.max_batch_size, parsed.batch_timeout_micros) == (32, 500)
    with pytest.raises(ValueError):
        BatchingOptions(max_batch_size=C.MAX_BATCH + 1)
    with pytest.raises(ConfigError, match=r"BatchingOptions.num_batch_threads must be >= 1, got 0"):
        BatchingOptions.from_text("num_batch_threads { value: 0 }")
    with pytest.raises(ConfigError, match="no-such-file.txt"):
        BatchingOptions.from_file(PARAMETERS_FILE.parent / "no-such-file.txt")


def test_batch_threads_default_to_the_cores_this_process_may_use_as_in_tf_serving():
    assert BatchingOptions().num_batch_threads is None
    assert BatchingOptions().batch_threads == len(os.sched_getaffinity(0))
    assert BatchingOptions.from_text("num_batch_threads { value: 3 }").batch_threads == 3


@pytest.fixture(scope="module")
def batching_client(batching_server):
    with VAEClient(f"127.0.0.1:{batching_server.port}", timeout=30) as client:
        yield client


def run_concurrently(function, arguments):
    with ThreadPoolExecutor(max_workers=len(arguments)) as pool:
        return list(pool.map(function, arguments))


def test_concurrent_generate_is_batched_and_matches_unbatched(batching_server, batching_client, client):
    before = batching_server.scheduler.stats()[C.GENERATE]
    requests = [(n, seed) for seed, n in enumerate([1, 3, 16, 5, 8, 2, 13, 4] * 2)]
    batched = run_concurrently(lambda a: batching_client.generate_with_latents(a[0], seed=a[1]), requests)
    batches, tasks = np.subtract(batching_server.scheduler.stats()[C.GENERATE], before)
    assert tasks == len(requests) and batches < tasks  # requests shared calls
    for (n, seed), (images, z) in zip(requests, batched):
        expected_images, expected_z = client.generate_with_latents(n, seed=seed)
        np.testing.assert_array_equal(z, expected_z)
        np.testing.assert_allclose(images, expected_images, atol=1e-6)


def test_concurrent_row_requests_match_unbatched(batching_client, client, images):
    sizes = [1, 2, 8, 3, 5, 8, 1, 4]
    parts = [images[:n] for n in sizes]
    encoded = run_concurrently(batching_client.encode, parts)
    scores = run_concurrently(batching_client.log_likelihood, parts)
    for part, codes, score in zip(parts, encoded, scores):
        np.testing.assert_allclose(codes[C.Z_MEAN], client.encode(part)[C.Z_MEAN], atol=1e-6)
        np.testing.assert_allclose(score, client.log_likelihood(part), rtol=1e-5)


def test_batched_errors_stay_with_their_request(batching_client):
    from serving.client import ServingError

    def call(n):
        try:
            return batching_client.generate(n, seed=1).shape[0]
        except ServingError as err:
            return err.code

    results = run_concurrently(call, [2, 3, 4])
    assert results == [2, 3, 4]
    with pytest.raises(ServingError) as err:
        batching_client.predict(
            C.GENERATE,
            {C.NUM_SAMPLES: np.int32(-1), C.SEED: np.zeros(2, np.int64), C.TEMPERATURE: np.float32(1)},
        )
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert batching_client.generate(2, seed=1).shape == (2, *IMAGE_SHAPE)


@pytest.fixture(scope="module")
def strict_export(vae, tmp_path_factory):
    return export_strict_encoder(vae, tmp_path_factory.mktemp("strict") / C.MODEL_NAME / "1")


def test_a_request_that_fails_inside_a_batch_fails_alone(strict_export, images):
    """Seven one-image encode requests form one batch (max_batch_size 7, a long timeout);
    one image is out of range, so the batched call fails in the graph. The batch runs again
    request by request: that one gets INVALID_ARGUMENT, the six others their own codes."""
    from serving.client import ServingError

    options = BatchingOptions(max_batch_size=7, batch_timeout_micros=60_000_000)
    server = start_server(strict_export.parent, poll_seconds=0, batching=options)
    bad = np.full((1, *IMAGE_SHAPE), 2.0, np.float32)
    parts = [images[i : i + 1] for i in range(3)] + [bad] + [images[i : i + 1] for i in range(3, 6)]
    try:
        with VAEClient(f"127.0.0.1:{server.port}", timeout=120) as strict:
            strict.metadata()  # (the client's first call reads it; not a batched call)

            def call(part):
                try:
                    return strict.encode(part)
                except ServingError as err:
                    return err

            results = run_concurrently(call, parts)
        stats, split = server.scheduler.stats()[C.ENCODE], server.scheduler.split_batches()[C.ENCODE]
    finally:
        server.stop(grace=1)
    assert stats == (1, 7) and split == 1  # one batch of all seven, which failed and was split
    error = results[3]
    assert isinstance(error, ServingError) and error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "images must be within [0, 1]" in error.details
    encode = tf.saved_model.load(str(strict_export)).signatures[C.ENCODE]
    for part, codes in zip(parts[:3] + parts[4:], results[:3] + results[4:]):
        assert isinstance(codes, dict), codes
        np.testing.assert_allclose(codes[C.Z_MEAN], encode(**{C.IMAGES: tf.constant(part)})[C.Z_MEAN], atol=1e-6)


@pytest.mark.parametrize("failure", [RequestError(grpc.StatusCode.INVALID_ARGUMENT, "bad value"), KeyError("bug")],
                         ids=["request error", "bug"])
def test_a_batch_that_raises_fails_only_the_task_that_raises(failure):
    """The queue's own unit: a batch function that raises whenever the bad task is in it."""
    def run(tasks):
        if any(t.prepared.value < 0 for t in tasks):
            raise failure
        for task in tasks:
            task.result = {"twice": task.prepared.value * 2}

    queue = _Queue("test", BatchingOptions(max_batch_size=4, batch_timeout_micros=60_000_000), run)
    servable = object()
    tasks = [_Task(servable, SimpleNamespace(rows=1, value=v), lambda: True) for v in (1, 2, -1, 3)]
    threads = [threading.Thread(target=queue.submit, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert (queue.batches_run, queue.tasks_run, queue.batches_split) == (1, 4, 1)
    assert [t.result for t in tasks] == [{"twice": 2}, {"twice": 4}, None, {"twice": 6}]
    expected = grpc.StatusCode.INVALID_ARGUMENT if isinstance(failure, RequestError) else grpc.StatusCode.INTERNAL
    assert [t.error for t in tasks[:2] + tasks[3:]] == [None] * 3 and tasks[2].error.code == expected


def test_a_full_queue_answers_unavailable():
    """The queue's own unit: a batch function that blocks until released."""
    started, release = threading.Event(), threading.Event()

    def run(tasks):
        started.set()
        release.wait(10)
        for task in tasks:
            task.result = {}

    queue = _Queue("test", BatchingOptions(max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1), run)
    servable = object()
    first, second = (_Task(servable, SimpleNamespace(rows=1), lambda: True) for _ in range(2))
    threads = [threading.Thread(target=queue.submit, args=(task,)) for task in (first, second)]
    try:
        threads[0].start()
        assert started.wait(10)  # the first task is running on its own thread, the queue is empty
        threads[1].start()  # one batch may wait
        wait_for(lambda: second in queue._tasks, timeout=10)
        with pytest.raises(RequestError) as err:
            queue.submit(_Task(servable, SimpleNamespace(rows=1), lambda: True))
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "queue" in err.value.message
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
    assert first.done and second.done and second.error is None and second.result == {}
    assert (queue.batches_run, queue.tasks_run) == (2, 2)
    queue.stop()
    with pytest.raises(RequestError):
        queue.submit(_Task(servable, SimpleNamespace(rows=1), lambda: True))


@pytest.mark.parametrize("threads, timeout", [(1, 0), (1, 500), (3, 0), (3, 500)])
def test_many_threads_each_get_their_own_result(threads, timeout):
    """Leaders hand over correctly: every task runs once, gets its result, nobody hangs."""
    rng = np.random.default_rng(threads * 1000 + timeout)

    def run(tasks):
        for task in tasks:
            task.result = {"twice": task.prepared.value * 2}

    options = BatchingOptions(max_batch_size=8, batch_timeout_micros=timeout, num_batch_threads=threads)
    queue = _Queue("test", options, run)
    servables, wrong = [object(), object()], []

    def worker(k):
        for j in range(60):
            value = k * 1000 + j
            task = _Task(servables[j % 2], SimpleNamespace(rows=int(rng.integers(0, 10)), value=value), lambda: True)
            queue.submit(task)
            if task.result != {"twice": 2 * value}:
                wrong.append(value)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(30)
    assert not any(t.is_alive() for t in workers) and not wrong
    assert queue.tasks_run == 12 * 60 and queue.batches_run <= queue.tasks_run
