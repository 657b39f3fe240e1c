"""generate(16) over TF Serving's REST API beside gRPC and in-process, in one run; then REST
throughput with concurrent clients.

    flock /tmp/vae-bench.lock .venv/bin/python benchmarks/serving_rest.py \
        [--requests 2000] [--load-requests 10000] [--clients 8]

One `vae serve` subprocess serves both ports (`--port`, `--rest-api-port`, with the
Prometheus page on); the REST client keeps one HTTP/1.1 connection per thread (as curl
--keepalive or any pooled client would) and parses the answer into a float32 array, the
same work a gRPC client does with the proto. Latency: the paths take turns in rounds so
background load hits each alike; p50/p90/p99 in ms. Throughput: `--clients` threads send
`--load-requests` REST requests in all; every answer is checked (status 200, 16 images);
the error count must be 0. This process holds TensorFlow (for the in-process row), so
its garbage collector's full passes would stall a REST client's JSON parsing by hundreds of
ms (measured: 25 of 300 calls over 50 ms); `gc.freeze()` after setup keeps them short, as
a client process without TensorFlow would be. Without --export-dir it exports the default model (latent 16,
MLP 512-256, random weights).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import gc  # noqa: E402
import http.client  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from serving_latency import (  # noqa: E402
    ROOT,
    free_port,
    generate_inputs,
    latest_generate,
    load_average,
    model_path,
    percentiles,
    serve_subprocess,
    time_calls,
)

from serving import contract as C  # noqa: E402


class RestGenerate:
    """generate(n) over REST on one kept-alive connection; returns the images as float32."""

    def __init__(self, port: int, num_samples: int, parse: bool = True):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.num_samples = num_samples
        self.parse = parse

    def __call__(self, seed: int) -> np.ndarray | bytes:
        body = json.dumps({"signature_name": C.GENERATE, "inputs": {
            C.NUM_SAMPLES: self.num_samples, C.SEED: [seed, 0], C.TEMPERATURE: 1.0}})
        self.connection.request("POST", f"/v1/models/{C.MODEL_NAME}:predict", body=body,
                                headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
        if not self.parse:  # what the server and the wire cost, without the client's JSON parsing
            return payload
        return np.asarray(json.loads(payload)["outputs"][C.IMAGES], np.float32)

    def close(self) -> None:
        self.connection.close()


def rest_load(port: int, clients: int, requests: int, num_samples: int) -> dict:
    """`requests` REST generate calls spread over `clients` threads; rate, latency, errors."""
    callers = [RestGenerate(port, num_samples) for _ in range(clients)]
    for caller in callers:
        caller(0)  # connect before the clock starts
    counter, lock = itertools.count(), threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def worker(caller: RestGenerate) -> None:
        mine = []
        while True:
            with lock:
                index = next(counter)
            if index >= requests:
                break
            start = time.perf_counter_ns()
            try:
                if caller(index).shape[0] != num_samples:
                    errors.append(f"request {index}: wrong number of images")
            except Exception as err:  # noqa: BLE001 - every failure is counted
                errors.append(f"request {index}: {err}")
            mine.append((time.perf_counter_ns() - start) / 1e6)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in callers]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    for caller in callers:
        caller.close()
    return {"rate": requests / seconds, "seconds": seconds, "errors": errors, **percentiles(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="timed latency calls per path")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--load-requests", type=int, default=10_000, help="REST requests in the throughput run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--export-dir", help="a model folder with versions (default: export one)")
    parser.add_argument("--serve-args", default="", help="extra `vae serve` flags")
    args = parser.parse_args()

    from serving.client import VAEClient

    rest_port = free_port()
    serve_flags = ("--rest-api-port", str(rest_port), "--monitoring-config-file",
                   str(ROOT / "serving" / "monitoring.config"), *args.serve_args.split())
    model_dir, cleanup = model_path(args.export_dir)
    with cleanup:
        servable, signature = latest_generate(model_dir)

        def inputs(i: int) -> dict[str, np.ndarray]:
            return generate_inputs(i, args.num_samples)

        with serve_subprocess(model_dir, False, serve_flags) as target, VAEClient(target) as client:
            rest = RestGenerate(rest_port, args.num_samples)
            rest_bytes = RestGenerate(rest_port, args.num_samples, parse=False)
            assert np.array_equal(rest(1), client.generate(args.num_samples, seed=1)), "REST != gRPC"
            paths = {
                "in-process Servable.run": lambda i: servable.run(signature, inputs(i), (C.IMAGES,)),
                "gRPC VAEClient.generate": lambda i: client.generate(args.num_samples, seed=i),
                "REST POST :predict": rest,
                "REST, answer unparsed": rest_bytes,
            }
            for call in paths.values():
                time_calls(call, args.warmup)
            gc.freeze()  # see the module doc
            loads = [load_average()]
            rows: dict[str, list[float]] = {name: [] for name in paths}
            per_round = max(1, args.requests // args.rounds)
            for r in range(args.rounds):
                for name, call in paths.items():
                    rows[name] += time_calls(call, per_round, r * per_round)
            rest.close()
            rest_bytes.close()
            loads.append(load_average())
            load = rest_load(rest_port, args.clients, args.load_requests, args.num_samples)
            loads.append(load_average())

    stats = {name: percentiles(samples) for name, samples in rows.items()}
    print(f"generate({args.num_samples}): {per_round * args.rounds} timed calls per path in {args.rounds} "
          f"interleaved rounds after {args.warmup} warm-up; serve flags [{' '.join(serve_flags[4:])}]; "
          f"load average {loads[0]} -> {loads[1]}")
    print(f"{'path':<25} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, row in stats.items():
        print(f"{name:<25} {row['p50']:8.3f} {row['p90']:8.3f} {row['p99']:8.3f} {row['mean']:8.3f}")
    grpc_p50, rest_p50 = stats["gRPC VAEClient.generate"]["p50"], stats["REST POST :predict"]["p50"]
    print(f"p50 of REST minus gRPC: {rest_p50 - grpc_p50:.3f} ms (answer unparsed: "
          f"{stats['REST, answer unparsed']['p50'] - grpc_p50:.3f} ms)")
    print(f"REST throughput, {args.clients} clients, {args.load_requests} requests: {load['rate']:.1f} req/s "
          f"in {load['seconds']:.1f} s; latency p50 {load['p50']:.2f} ms p99 {load['p99']:.2f} ms; "
          f"errors {len(load['errors'])}; load average -> {loads[2]}")
    for error in load["errors"][:5]:
        print("  ", error)


if __name__ == "__main__":
    main()
