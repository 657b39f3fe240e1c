"""What the default model costs to serve, beside a reference model, side by side in one run.

    .venv/bin/python benchmarks/default_cost.py [--candidate OVERRIDE ...] [--reference OVERRIDE ...] [--rounds 10]

Exports two models with random weights (speed does not depend on the weights): the
project's default `ModelConfig` (with the `--candidate` overrides, e.g.
`stochastic_layers=2` to price a candidate default) and the reference (by default the default with the prior
N(0, I), the default before the VampPrior became it), loads both with the server's own
`Servable` and times, in turns so that background load falls on both alike:
`generate(16)` calls one after another (p50 and p99 in ms) and `encode` on batches of
1,024 images (rows/s). Prints each figure and the default's ratio to the reference's
(issue 16 keeps both within 1.5x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from serving import contract as C  # noqa: E402
from serving_latency import export_default_model, generate_inputs, latest_generate, percentiles, time_calls  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", nargs="*", default=[],
                        help="ModelConfig overrides of the default (a candidate default; none: the default)")
    parser.add_argument("--reference", nargs="*", default=["density.prior=gaussian"],
                        help="ModelConfig overrides of the reference (default: density.prior=gaussian)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--generate-calls", type=int, default=300, help="generate(16) calls per round")
    parser.add_argument("--encode-calls", type=int, default=20, help="encode calls of 1,024 rows per round")
    args = parser.parse_args()

    from model import ModelConfig

    default = ModelConfig()
    reference = default
    for assignment in args.candidate:
        default = default.override(assignment)
    for assignment in args.reference:
        reference = reference.override(assignment)
    images = np.random.default_rng(0).random((1024, *default.image_shape), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="vae-cost-") as tmp:
        models = {name: latest_generate(export_default_model(Path(tmp) / name, config).parent)
                  for name, config in (("default", default), ("reference", reference))}
        latencies = {name: [] for name in models}
        rates = {name: [] for name in models}
        for servable, generate in models.values():  # warm up
            time_calls(lambda i: servable.run(generate, generate_inputs(i, 16)), 20)
            servable.run(servable.signatures[C.ENCODE], {C.IMAGES: images})
        for round_ in range(args.rounds):
            for name, (servable, generate) in models.items():
                latencies[name] += time_calls(lambda i: servable.run(generate, generate_inputs(i, 16)),
                                              args.generate_calls, round_ * args.generate_calls)
                encode = servable.signatures[C.ENCODE]
                start = time.perf_counter()
                for _ in range(args.encode_calls):
                    servable.run(encode, {C.IMAGES: images})
                rates[name].append(args.encode_calls * len(images) / (time.perf_counter() - start))

    print(f"default with {args.candidate}: {default.to_dict()}\nreference: the default with {args.reference}; "
          f"{args.rounds} rounds, load "
          f"average {os.getloadavg()[0]:.2f}")
    stats = {name: percentiles(values) for name, values in latencies.items()}
    for name in models:
        print(f"{name:<10} generate(16) p50 {stats[name]['p50']:.3f} ms  p99 {stats[name]['p99']:.3f} ms  "
              f"encode {statistics.median(rates[name]):,.0f} rows/s (median of rounds)")
    print(f"default / reference: generate p50 {stats['default']['p50'] / stats['reference']['p50']:.2f}x, "
          f"encode rate {statistics.median(rates['default']) / statistics.median(rates['reference']):.2f}x")


if __name__ == "__main__":
    main()
