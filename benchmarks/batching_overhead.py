"""What server-side batching costs and saves without gRPC or client processes: concurrent
threads call generate(16) of one export in this process, straight through `Servable.run`
(what `vae serve` does without batching) or through the server's `BatchScheduler` with
1, 2, 4 or 8 batch threads, side by side in interleaved rounds.

    .venv/bin/python benchmarks/batching_overhead.py [--threads 8] [--requests 3200] [--rounds 3]

This isolates the server's own part of `serving_throughput.py`'s comparison: per mode it
prints requests/s, this process's CPU time per request (user + system) and the requests
per batch the scheduler formed. With 8 batch threads and 8 callers nearly every request
leads its own batch of one, so that row is the queue's cost with nothing shared.
`--model FIELD=VALUE...` exports another model (random weights, e.g. architecture=conv).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from serving_latency import generate_inputs, latest_generate, load_average, model_path  # noqa: E402


def main() -> None:
    from serving import contract as C
    from serving.batching import BatchingOptions, BatchScheduler
    from serving.servable import Prepared

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=8, help="concurrent callers")
    parser.add_argument("--requests", type=int, default=3200, help="requests per mode per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-threads", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--model", nargs="*", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()

    model_dir, cleanup = model_path(None, args.model)
    with cleanup:
        servable, signature = latest_generate(model_dir)

        def prepared(seed: int) -> Prepared:
            return Prepared(signature, generate_inputs(seed, args.num_samples), tuple(signature.outputs))

        schedulers = {n: BatchScheduler(BatchingOptions(num_batch_threads=n)) for n in args.batch_threads}

        def through(scheduler):
            return lambda p: scheduler.submit(servable, p, lambda: True)

        modes = {"direct": lambda p: servable.run(p.signature, p.inputs)}
        for n, scheduler in schedulers.items():
            modes[f"batching, {n} thread{'s' * (n > 1)}"] = through(scheduler)

        def run(call, requests: int) -> tuple[float, float]:
            """(requests/s, CPU ms per request) of `requests` calls spread over the threads."""
            each = requests // args.threads

            def caller(index: int) -> None:
                for i in range(each):
                    call(prepared(index * each + i))

            threads = [threading.Thread(target=caller, args=(i,)) for i in range(args.threads)]
            cpu, wall = time.process_time(), time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            done = each * args.threads
            return done / (time.perf_counter() - wall), 1e3 * (time.process_time() - cpu) / done

        for call in modes.values():  # warm up every path
            run(call, 4 * args.threads)
        before = {n: s.stats()[C.GENERATE] for n, s in schedulers.items()}
        rates: dict[str, list[float]] = {m: [] for m in modes}
        cpus: dict[str, list[float]] = {m: [] for m in modes}
        load_before = load_average()
        for _ in range(args.rounds):  # take turns, so background load hits every mode alike
            for mode, call in modes.items():
                rate, cpu = run(call, args.requests)
                rates[mode].append(rate)
                cpus[mode].append(cpu)
        per_batch = {}
        for n, scheduler in schedulers.items():
            batches, tasks = (a - b for a, b in zip(scheduler.stats()[C.GENERATE], before[n]))
            per_batch[f"batching, {n} thread{'s' * (n > 1)}"] = tasks / max(batches, 1)
            scheduler.stop()

    print(f"generate({args.num_samples}) in process, {args.threads} calling threads, {args.requests} requests per "
          f"mode in each of {args.rounds} rounds; model {args.model or 'default'}; "
          f"load average {load_before} -> {load_average()}")
    print(f"{'mode':<22} {'req/s':>7} {'vs direct':>10} {'CPU ms/req':>11} {'requests/batch':>15}")
    direct = statistics.median(rates["direct"])
    for mode in modes:
        rate = statistics.median(rates[mode])
        batch = f"{per_batch[mode]:15.2f}" if mode in per_batch else f"{'-':>15}"
        print(f"{mode:<22} {rate:7.0f} {rate / direct:9.2f}x {statistics.median(cpus[mode]):11.3f} {batch}")
    print("(medians over the rounds)")


if __name__ == "__main__":
    main()
