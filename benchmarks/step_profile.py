"""Where the time of a training step goes: the project's step taken apart, side by side.

The model is `train_throughput.py`'s (the 784-400-20 MLP VAE with a Gaussian prior,
Bernoulli likelihood, dynamically binarised Fashion-MNIST, Adam 1e-3), built, compiled and
trained by the project's own code (`pipelines.train.run.build_model`, `Trainer`). Each
variant removes one part of the step; images/s is the best of `--repeats` timed calls of
`--steps` steps each, after a warm-up, all in one process per precision:

- `full`: the trainer's compiled steps (`Trainer._train_steps`, `STEPS_PER_CALL` a call)
  over the real in-memory input: each batch gathered by index and binarised, as `vae
  train` runs them;
- `fixed batch`: the same steps over one binarised batch that tf.data repeats (no gather,
  no binarisation);
- `no input`: the replica step in a `tf.function` loop on a batch held in the graph (no
  tf.data iterator, no distribution wrapper);
- `no update`: as `no input`, with the gradients computed but not applied (Adam's share);
- `forward`: the objective alone, no gradient (the backward pass's share);
- `matmuls`: the step's matrix products alone (`train_throughput.matmul_rates`): the
  limit.

A row's share is the time it adds over the row below, as a fraction of the full step
(the input pipeline, the iterator and distribution wrapper, Adam, the backward pass); the
`forward` and `matmuls` rows give their whole time. The gap between `no update` and
`matmuls` is what the step does besides its matrix products (element-wise ops, the loss,
the KL, the sampling, the bias gradients, the per-op overhead).
`--models` adds the full step of the project's default prior (the VampPrior) and of two
stochastic layers, whose cost per step the issue asks for.

Usage:
    .venv/bin/python benchmarks/step_profile.py --batch-sizes 128 1024
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train_throughput import HIDDEN, LATENT, matmul_rates  # noqa: E402

BASE = [f"model.hidden_units=[{HIDDEN}]", f"model.latent_dim={LATENT}", "model.density.prior=\"gaussian\"",
        "train.learning_rate=1e-3", "train.lr_schedule=\"constant\"", "train.kl_warmup_fraction=0",
        "train.init_output_bias=false", "train.tensorboard=false"]
MODELS = {
    "VampPrior (the default prior)": ["model.density.prior=\"vamp\""],
    "two stochastic layers": ["model.density.stochastic_layers=2"],
}
# Each variant of the chain removes one part of the one before it.
CHAIN = ("full", "fixed batch", "no input", "no update", "forward")
VARIANTS = (*CHAIN, "matmuls")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def best_rate(run, batch: int, steps: int, repeats: int) -> float:
    """Images/s of the best of `repeats` calls of `run(steps)` after two warm-up calls."""
    run(steps)
    run(steps)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        best = min(best, time.perf_counter() - start)
    return steps * batch / best


def step_rates(batch: int, steps: int, repeats: int, mixed: bool, data_dir: str, overrides: list[str],
               variants: bool) -> dict[str, float]:
    """The images/s of each variant (only `full` when `variants` is False) for this
    model config, in this process."""
    import tempfile

    import tensorflow as tf

    from pipelines.config import RunConfig
    from pipelines.distribute import make_cluster
    from pipelines.train.inputs import load_datasets
    from pipelines.train.run import build_model, set_precision
    from pipelines.train.trainer import Trainer

    config = RunConfig()
    for assignment in [f'data.data_dir="{data_dir}"', f"train.batch_size={batch}",
                       f"train.mixed_precision={'true' if mixed else 'false'}", *BASE, *overrides]:
        config = config.override(assignment)
    set_precision(config)
    config, datasets = load_datasets(config)
    cluster = make_cluster("default", 0)
    with cluster.strategy.scope():
        model = build_model(config)
    trainer = Trainer(model, cluster, global_batch=batch, workdir=Path(tempfile.mkdtemp()), tensorboard=False,
                      seed=0)

    def over(dataset):
        iterator = iter(cluster.strategy.experimental_distribute_dataset(dataset))
        return lambda n: trainer._train_steps(iterator, tf.constant(n)).numpy()

    rates = {"full": best_rate(over(datasets.train(0)), batch, steps, repeats)}
    if not variants:
        return rates
    held = next(iter(datasets.train(0)))
    rates["fixed batch"] = best_rate(over(tf.data.Dataset.from_tensors(held).repeat()), batch, steps, repeats)

    def in_graph(step):
        @tf.function
        def run(n):
            total = tf.zeros(())
            for _ in tf.range(n):
                total += step(held)
            return total

        return lambda n: run(tf.constant(n)).numpy()

    def whole(batch_):
        return trainer._replica_step(batch_)[0]

    def no_update(batch_):
        with tf.GradientTape() as tape:
            terms, regularization = trainer._objective_parts(batch_, training=True, seed=trainer._noise_seed())
            loss = tf.reduce_mean(terms["loss"]) + regularization
        gradients = tape.gradient(loss, model.trainable_variables)
        return loss + tf.add_n([tf.reduce_sum(g[..., :1]) for g in gradients]) * 0.0

    def forward(batch_):
        terms, regularization = trainer._objective_parts(batch_, training=True, seed=trainer._noise_seed())
        return tf.reduce_mean(terms["loss"]) + regularization

    for name, step in (("no input", whole), ("no update", no_update), ("forward", forward)):
        rates[name] = best_rate(in_graph(step), batch, steps, repeats)
    return rates


def table(batch: int, precision: str, rates: dict[str, float]) -> list[str]:
    """Markdown rows: each variant's images/s, ms per step and share of the full step
    (what it adds over the next variant of the chain; for `forward` and `matmuls`, their
    whole time)."""
    full_ms = batch / rates["full"] * 1e3
    rows = []
    for index, name in enumerate(VARIANTS):
        ms = batch / rates[name] * 1e3
        below = CHAIN[index + 1] if name in CHAIN and index + 1 < len(CHAIN) else None
        share = (ms - batch / rates[below] * 1e3) / full_ms if below else ms / full_ms
        rows.append(f"| {batch} | {precision} | {name} | {rates[name]:,.0f} | {ms:.3f} | {100 * share:.0f}% |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--steps", type=int, default=200, help="steps per timed call (default: 200)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls, the best counts (default: 5)")
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bf16"],
                        choices=["float32", "mixed_bf16"], help="default: both")
    parser.add_argument("--models", action="store_true",
                        help="also time the full step of the VampPrior and of two stochastic layers")
    parser.add_argument("--data-dir", default=os.path.expanduser("~/tensorflow_datasets"),
                        help="the tfds folder holding Fashion-MNIST (default: ~/tensorflow_datasets)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # one measurement in this fresh process; JSON on the last line of stdout
        job = json.loads(args.worker)
        if job["what"] == "matmul":
            print(json.dumps(matmul_rates(job["batch"], job["repeats"])))
        else:
            print(json.dumps(step_rates(job["batch"], args.steps, args.repeats, job["mixed"], args.data_dir,
                                        job["overrides"], job["variants"])))
        return

    command = shlex.join([".venv/bin/python", os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    common = ["--steps", str(args.steps), "--repeats", str(args.repeats), "--data-dir", args.data_dir]
    lines = [f"`{command}` ({time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.2f})", "",
             "| batch | precision | variant | images/s | ms per step | share of the full step |",
             "| --- | --- | --- | --- | --- | --- |"]
    extra = ["", "| batch | precision | model | images/s of the full step | ms per step | against the Gaussian prior |",
             "| --- | --- | --- | --- | --- | --- |"]
    for batch in args.batch_sizes:
        limits = _worker_with(common, {"what": "matmul", "batch": batch, "repeats": 7})
        for precision in args.precisions:
            mixed = precision == "mixed_bf16"
            log(f"batch {batch}, {precision}")
            rates = _worker_with(common, {"what": "step", "batch": batch, "mixed": mixed, "overrides": [],
                                          "variants": True})
            flop = limits["float32_flop_per_image"]
            rates["matmuls"] = limits["bfloat16" if mixed else "float32"] * 1e9 / flop
            lines += table(batch, precision, rates)
            if args.models:
                for model, overrides in MODELS.items():
                    other = _worker_with(common, {"what": "step", "batch": batch, "mixed": mixed,
                                                  "overrides": overrides, "variants": False})["full"]
                    extra.append(f"| {batch} | {precision} | {model} | {other:,.0f} | {batch / other * 1e3:.3f} "
                                 f"| {rates['full'] / other:.2f}x the time |")
    print("\n".join(lines + (extra if args.models else [])))


def _worker_with(common: list[str], job: dict) -> dict:
    """Runs one measurement in a fresh process (Keras' precision policy and the thread
    pools start clean); its JSON is the last line of its stdout."""
    argv = [sys.executable, __file__, *common, "--worker", json.dumps(job)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log(done.stdout[-3000:] + done.stderr[-6000:])
        raise SystemExit(f"worker failed: {shlex.join(argv)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
