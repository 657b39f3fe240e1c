"""generate(16) throughput of `vae serve`: one client, then 8 concurrent clients, with
server-side batching off and on, side by side in one run.

    .venv/bin/python benchmarks/serving_throughput.py [--requests 10000] [--clients 8]

Each concurrent client is its own process with its own channel (`VAEClient`), as real
clients are (`--client-threads`: threads of this process instead, which then share one
Python interpreter lock, so the client side's own parsing caps the rate); the
two servers (batching off, batching on) are `vae serve` subprocesses on loopback, running
side by side; the four runs take turns in rounds so that other load on the machine falls
on all of them alike. Without --export-dir it exports the
default model (latent 16, MLP 512-256, random weights). Targets: with batching on, 8
clients reach >= 2x the single-client request rate, with zero errors. Each server's CPU
time (user + system, from /proc) is read around every run: the server's CPU per request
shows what batching saves even where the clients' own CPU caps the rate.
`--variant NAME=FILE` (repeatable) adds a batching server reading another
`BatchingParameters` file to the same rounds, e.g. to choose the defaults. `--model
FIELD=VALUE...` exports another model (e.g. `architecture=conv`, whose decoder does more
work per request) instead of the default one.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import threading
import time
from pathlib import Path

from serving_latency import SERVER_PIDS, cpu_seconds, load_average, model_path, percentiles, serve_subprocess


class Load:
    """Open connections to one server; `run` spreads generate calls over `clients` threads."""

    def __init__(self, target: str, clients: int, num_samples: int):
        from serving.client import VAEClient

        self._start_counts(target, num_samples)
        self.connections = [VAEClient(target, timeout=30) for _ in range(clients)]
        for client in self.connections:  # connect and cache metadata before any clock starts
            client.generate(num_samples, seed=0)

    def _start_counts(self, target: str, num_samples: int) -> None:
        """The figures every load accumulates over its rounds, at zero."""
        self.num_samples = num_samples
        self.server_pid = SERVER_PIDS[target]
        self.server_cpu = 0.0
        self.seconds, self.requests = 0.0, 0
        self.round_rates: list[float] = []  # requests/s of each round
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def run(self, requests: int) -> None:
        counter, lock = itertools.count(self.requests), threading.Lock()
        end = self.requests + requests

        def worker(client) -> None:
            mine = []
            while True:
                with lock:
                    index = next(counter)
                if index >= end:
                    break
                timed_generate(client, self.num_samples, index, mine, self.errors)
            with lock:
                self.latencies.extend(mine)

        threads = [threading.Thread(target=worker, args=(c,)) for c in self.connections]
        cpu, start = cpu_seconds(self.server_pid), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._account(requests, time.perf_counter() - start, cpu_seconds(self.server_pid) - cpu)
        self.requests = end

    def _account(self, requests: int, seconds: float, server_cpu: float) -> None:
        self.seconds += seconds
        self.server_cpu += server_cpu
        self.round_rates.append(requests / seconds)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def close(self) -> None:
        for client in self.connections:
            client.close()


def timed_generate(client, num_samples: int, index: int, latencies: list[float], errors: list[str]) -> None:
    """Request `index`: one generate call; appends its latency (ms) and any error."""
    from serving.client import ServingError

    start = time.perf_counter_ns()
    try:
        if client.generate(num_samples, seed=index).shape[0] != num_samples:
            errors.append(f"request {index}: wrong number of images")
    except ServingError as err:
        errors.append(f"request {index}: {err}")
    latencies.append((time.perf_counter_ns() - start) / 1e6)


def _client_process(target: str, num_samples: int, conn, counter) -> None:
    """One client process: connects, then runs generate calls until the shared counter
    passes the end the parent sends; answers with its latencies and errors."""
    from serving.client import VAEClient

    client = VAEClient(target, timeout=30)
    client.generate(num_samples, seed=0)
    conn.send("ready")
    while (end := conn.recv()) is not None:
        latencies, errors = [], []
        while True:
            with counter.get_lock():
                index = counter.value
                counter.value += 1
            if index >= end:
                break
            timed_generate(client, num_samples, index, latencies, errors)
        conn.send((latencies, errors))
    client.close()


class ProcessLoad(Load):
    """Like `Load`, with each client in its own process (started, connected and warmed up
    before any clock starts; the clock covers only the requests)."""

    def __init__(self, target: str, clients: int, num_samples: int):
        context = multiprocessing.get_context("spawn")
        self._start_counts(target, num_samples)
        self.counter = context.Value("q", 0)
        self.pipes, self.processes = [], []
        for _ in range(clients):
            parent, child = context.Pipe()
            process = context.Process(target=_client_process, args=(target, num_samples, child, self.counter),
                                      daemon=True)
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)
        for pipe in self.pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a client process failed to start")

    def run(self, requests: int) -> None:
        end = self.requests + requests
        with self.counter.get_lock():
            self.counter.value = self.requests
        cpu, start = cpu_seconds(self.server_pid), time.perf_counter()
        for pipe in self.pipes:
            pipe.send(end)
        for pipe in self.pipes:
            latencies, errors = pipe.recv()
            self.latencies.extend(latencies)
            self.errors.extend(errors)
        self._account(requests, time.perf_counter() - start, cpu_seconds(self.server_pid) - cpu)
        self.requests = end

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for process in self.processes:
            process.join(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000, help="requests of each concurrent run")
    parser.add_argument("--single-requests", type=int, default=2_000, help="requests of each 1-client run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="the four runs take turns this many times")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--export-dir", help="a model folder with versions (default: export one)")
    parser.add_argument("--model", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="ModelConfig fields of the exported model (random weights), e.g. "
                             "architecture=conv; not with --export-dir")
    parser.add_argument("--serve-args", default="", help="extra `vae serve` flags for both servers")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FILE",
                        help="also run a batching server with this BatchingParameters file (repeatable)")
    parser.add_argument("--client-threads", action="store_true",
                        help="run the clients as threads of this process instead of one process each")
    args = parser.parse_args()

    variants = [tuple(v.split("=", 1)) for v in args.variant]
    if any(len(v) != 2 or not v[0] or v[0] in ("off", "on") for v in variants):
        parser.error("--variant takes NAME=FILE, NAME not 'off' or 'on'")
    if args.model and args.export_dir:
        parser.error("--model describes the model to export; --export-dir serves one already exported")
    model_dir, cleanup = model_path(args.export_dir, args.model)
    extra = tuple(args.serve_args.split())
    with contextlib.ExitStack() as stack:
        stack.enter_context(cleanup)
        targets = {"off": stack.enter_context(serve_subprocess(model_dir, False, extra)),
                   "on": stack.enter_context(serve_subprocess(model_dir, True, extra))}
        for name, path in variants:
            flags = ("--enable-batching", "--batching-parameters-file", str(Path(path).resolve()))
            targets[name] = stack.enter_context(serve_subprocess(model_dir, False, extra + flags))
        make_load = Load if args.client_threads else ProcessLoad
        loads = {
            (mode, clients): make_load(target, clients, args.num_samples)
            for mode, target in targets.items()
            for clients in (1, args.clients)
        }
        load_before = load_average()
        for _ in range(args.rounds):  # take turns, so background load hits every run alike
            for (mode, clients), load in loads.items():
                load.run((args.single_requests if clients == 1 else args.requests) // args.rounds)
        load_after = load_average()
        for load in loads.values():
            load.close()

    print(f"generate({args.num_samples}) on loopback; per batching mode: 1 client x "
          f"{loads[('off', 1)].requests} requests and {args.clients} clients x {loads[('off', args.clients)].requests} "
          f"requests in total, in {args.rounds} interleaved rounds; clients as "
          f"{'threads' if args.client_threads else 'processes'}; serve flags [{args.serve_args}]; "
          f"variants {dict(variants) or 'none'}; model {args.export_dir or args.model or 'default'}; load average {load_before} -> {load_after}")
    print(f"{'batching':<12} {'1 client req/s':>14} {f'{args.clients} clients req/s':>17} {'speed-up':>9} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'server CPU ms/req':>18} {'errors':>7}")
    for mode in targets:
        single, many = loads[(mode, 1)], loads[(mode, args.clients)]
        stats = percentiles(many.latencies)
        errors = single.errors + many.errors
        print(f"{mode:<12} {single.rate:14.0f} {many.rate:17.0f} {many.rate / single.rate:8.2f}x "
              f"{stats['p50']:7.2f} {stats['p99']:7.2f} {1e3 * many.server_cpu / many.requests:18.3f} "
              f"{len(errors):7d}")
        for message in errors[:5]:
            print("   ", message)
    off = loads[("off", args.clients)]
    for mode in list(targets)[1:]:
        on = loads[(mode, args.clients)]
        by_round = " ".join(f"{a / b:.2f}" for a, b in zip(on.round_rates, off.round_rates))
        print(f"{args.clients} clients, batching {mode} vs off: {on.rate / off.rate:.2f}x the request rate "
              f"(rounds: {by_round}), "
              f"{on.server_cpu / on.requests / (off.server_cpu / off.requests):.2f}x the server's CPU per request")
    ratio = loads[("on", args.clients)].rate / loads[("off", 1)].rate
    print(f"batching on, {args.clients} clients vs 1 client without batching: {ratio:.2f}x (target >= 2x, zero errors)")


if __name__ == "__main__":
    main()
