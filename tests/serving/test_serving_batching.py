"""Server-side batching: parameters, identical results under concurrency, queue limits."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from serving_testlib import IMAGE_SHAPE, wait_for

from serving import contract as C
from serving.batching import BatchingOptions, _Queue, _Task
from serving.client import VAEClient
from serving.servable import RequestError

PARAMETERS_FILE = Path(__file__).resolve().parents[2] / "serving" / "batching_parameters.txt"


def test_parameters_file_parses_as_tf_serving_text():
    options = BatchingOptions.from_file(PARAMETERS_FILE)
    assert options.max_batch_size <= C.MAX_BATCH and options.num_batch_threads >= 1
    parsed = BatchingOptions.from_text(
        "max_batch_size { value: 32 }  # rows\nbatch_timeout_micros: 500\nallowed_batch_sizes: 8\n"
    )
    assert (parsed.max_batch_size, parsed.batch_timeout_micros) == (32, 500)
    with pytest.raises(ValueError):
        BatchingOptions(max_batch_size=C.MAX_BATCH + 1)


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


def test_a_full_queue_answers_unavailable():
    """The queue's own unit: a batch function that blocks until released."""
    started, release = threading.Event(), threading.Event()

    def run(tasks):
        started.set()
        release.wait(10)
        for task in tasks:
            task.result = {}

    queue = _Queue("test", BatchingOptions(max_batch_size=1, max_enqueued_batches=1), run)
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
