"""Training throughput of the project against a plain PyTorch VAE, side by side in one run.

The model is the 784-400-20 MLP VAE (Bernoulli, dynamically binarised Fashion-MNIST,
Adam 1e-3). Throughput is images per second, the median over the epochs after the
first. PyTorch runs its fast settings: fused Adam, `rand < p` binarisation, in-memory
tensors, 2 threads, in float32 and with bf16 autocast. The project runs its own `vae
train` command (the in-memory input, the custom training loop) with evaluation cut to
a minimum, in float32 and with `--mixed-precision` (bf16 matrix products, float32
loss). The ratio columns compare the project's better precision with PyTorch in
float32 and with PyTorch's better precision.

The limit is measured in the same run, for each batch size and precision: TensorFlow
runs, in a loop inside one `tf.function`, exactly the matrix products of one training
step of this model at that batch size (forward, and the backward products of the
weights and of every layer's input except the images'), in float32 and in bfloat16;
the best of several timed repetitions after a warm-up gives the matrix-product rate,
and the limit is that rate divided by the FLOPs of those products per image (the
images per second of a step that did nothing but its matrix products). The float32
run is shown against the float32 limit, the mixed-precision run against the bf16 one.
A large square product is timed too, for reference (the machine's peak rate, which the
thin products of this model cannot reach at small batches).

Each training run and each measurement runs in a fresh Python process, so no setting
one leaves behind (Keras' global precision policy, thread pools) reaches the next.
Progress goes to stderr; stdout gets the Markdown for the README.

Usage (torch is a benchmark-only dependency: `pip install torch==2.13.0`):
    .venv/bin/python benchmarks/train_throughput.py --batch-sizes 128 1024 --epochs 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FOLDER = "/usr/share/datasets/fashion-mnist"
PIXELS, HIDDEN, LATENT = 784, 400, 20
PROJECT_OVERRIDES = [
    f"model.hidden_units=[{HIDDEN}]", f"model.latent_dim={LATENT}", "train.iwae_k=1",
    "train.eval_examples=500", "train.tensorboard=false", "train.learning_rate=1e-3",
]
SQUARE = 2048  # side of the reference square product


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the matrix-product rate -------------------------------------------------------------


def matmul_rates(batch: int, repeats: int) -> dict:
    """GFLOP/s of one training step's matrix products at `batch`, and of a SQUARE x
    SQUARE product, in float32 and bfloat16: best of `repeats` timed calls, each a loop
    of enough steps to take about a quarter of a second."""
    import tensorflow as tf

    def best_rate(flops_per_iteration: list[int], run, inputs) -> float:
        run(tf.constant(2), *inputs)  # trace and warm up
        start = time.perf_counter()
        run(tf.constant(5), *inputs)
        per_iteration = (time.perf_counter() - start) / 5
        n = max(5, round(0.25 / per_iteration))
        best = min(_timed(run, tf.constant(n), inputs) for _ in range(repeats))
        return sum(flops_per_iteration) * n / best / 1e9

    rates = {}
    for name, dtype in (("float32", tf.float32), ("bfloat16", tf.bfloat16)):
        rng = np.random.default_rng(0)

        def weight(rows, cols, rng=rng, dtype=dtype):
            return tf.cast(rng.standard_normal((rows, cols)).astype(np.float32) / rows**0.5, dtype)

        images = tf.cast(rng.random((batch, PIXELS)) < 0.5, dtype)
        weights = [weight(PIXELS, HIDDEN), weight(HIDDEN, LATENT), weight(HIDDEN, LATENT),
                   weight(LATENT, HIDDEN), weight(HIDDEN, PIXELS)]
        flops: list[int] = []  # filled in while tracing: 2*m*k*n for every product
        run = _loop(_step_products, flops)
        rates[name] = best_rate(flops, run, [images, *weights])
        a, b = weight(SQUARE, SQUARE), weight(SQUARE, SQUARE)
        square_flops: list[int] = []
        rates[f"square_{name}"] = best_rate(square_flops, _loop(_square_product, square_flops), [a, b])
        rates[f"{name}_flop_per_image"] = sum(flops) / batch
    return rates


def _timed(run, n, inputs) -> float:
    start = time.perf_counter()
    run(n, *inputs).numpy()
    return time.perf_counter() - start


def _loop(products, flops: list[int]):
    """A tf.function running `products` n times; one element of each result it does
    not pass on is summed, so that none is pruned."""
    import tensorflow as tf

    def matmul(a, b, transpose_a=False, transpose_b=False):
        m, k = (a.shape[1], a.shape[0]) if transpose_a else (a.shape[0], a.shape[1])
        n = b.shape[0] if transpose_b else b.shape[1]
        flops.append(2 * m * k * n)
        return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)

    @tf.function
    def run(n, *inputs):
        flops.clear()  # counted again if traced again
        def body(i, total):
            kept = products(matmul, *inputs)
            return i + 1, total + tf.add_n([tf.cast(t[0, 0], tf.float32) for t in kept])

        return tf.while_loop(lambda i, _: i < n, body, [tf.constant(0), tf.constant(0.0)])[1]

    return run


def _step_products(matmul, x, w1, w_mean, w_log_var, w3, w4):
    """The matrix products of one training step of the 784-400-20 MLP VAE, with the
    shapes and transpositions of TensorFlow's MatMul gradient; tensors of the right
    shapes stand in for the activations and gradients between them (no bias, no
    activation, no loss: the limit counts the products alone)."""
    h = matmul(x, w1)                                    # encoder hidden layer
    mean, log_var = matmul(h, w_mean), matmul(h, w_log_var)
    h3 = matmul(mean, w3)                                # decoder hidden layer (z ~ mean)
    logits = matmul(h3, w4)
    g3 = matmul(logits, w4, transpose_b=True)            # backward: logits' gradient ~ logits
    g_z = matmul(g3, w3, transpose_b=True)
    g_h = matmul(g_z, w_mean, transpose_b=True)          # gradient of h through both heads
    g_h_log_var = matmul(log_var, w_log_var, transpose_b=True)
    return [
        matmul(h3, logits, transpose_a=True),            # weight gradients
        matmul(mean, g3, transpose_a=True),
        matmul(h, g_z, transpose_a=True),
        matmul(h, log_var, transpose_a=True),
        matmul(x, g_h, transpose_a=True),                # (no gradient of the images)
        g_h_log_var,
    ]


def _square_product(matmul, a, b):
    return [matmul(a, b)]


# --- PyTorch -----------------------------------------------------------------------------


def fashion_mnist_train() -> np.ndarray:
    with gzip.open(f"{FOLDER}/train-images-idx3-ubyte.gz", "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)


def torch_images_per_second(batch: int, epochs: int, autocast: bool = False) -> list[float]:
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.set_num_threads(os.cpu_count() or 2)
    torch.manual_seed(0)

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.mu, self.logvar = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, x):
            h = F.relu(self.fc1(x))
            mu, logvar = self.mu(h), self.logvar(h)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            return self.fc4(F.relu(self.fc3(z))), mu, logvar

    data = torch.from_numpy(fashion_mnist_train().astype(np.float32) / 255.0)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    steps = len(data) // batch
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(data))
        for i in range(steps):
            x = data[order[i * batch:(i + 1) * batch]]
            x = (torch.rand_like(x) < x).float()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits, mu, logvar = model(x)
            logits, mu, logvar = logits.float(), mu.float(), logvar.float()
            recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = (recon + kl) / batch
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rates.append(steps * batch / (time.perf_counter() - start))
    return rates


# --- the runs, each in its own process ---------------------------------------------------


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, check=False, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        log(result.stdout[-3000:] + result.stderr[-6000:])
        raise SystemExit(f"{what} failed (exit {result.returncode}): {shlex.join(argv)}")
    return result


def _worker(args: list[str], what: str):
    result = _run([sys.executable, __file__, "--worker", *args], what)
    return json.loads(result.stdout.strip().splitlines()[-1])


def vae_command() -> list[str]:
    """The project's `vae` console command, as pyproject.toml declares it, run with this
    Python from the work tree (so it follows the code as it is, installed or not)."""
    import tomllib

    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["vae"]
    module, function = target.split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


def project_images_per_second(batch: int, epochs: int, data_dir: str, extra: list[str],
                              mixed: bool) -> list[float]:
    """Runs `vae train` and reads the seconds of each epoch from the metrics.json it
    writes (the benchmark's only contact with the project's code)."""
    with tempfile.TemporaryDirectory() as workdir:
        argv = [*vae_command(), "train", "--workdir", workdir,
                "--batch-size", str(batch), "--epochs", str(epochs), "--data-dir", data_dir,
                *(["--mixed-precision"] if mixed else []), *PROJECT_OVERRIDES, *extra]
        _run(argv, "the project's `vae train`")
        metrics = json.loads((Path(workdir) / "metrics.json").read_text())
    images_per_epoch = metrics["optimizer_steps"] // metrics["epochs"] * batch
    return [images_per_epoch / s for s in metrics["epoch_seconds"]]


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] or rates)


def _versions() -> str:
    found = {}
    for name in ("tensorflow", "torch"):
        try:
            from importlib.metadata import version

            found[name] = version(name)
        except Exception:  # noqa: BLE001 - only for the header
            found[name] = "?"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    return f"{cpu}, {os.cpu_count()} cores; TensorFlow {found['tensorflow']}, PyTorch {found['torch']}"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data-dir", default=os.path.expanduser("~/tensorflow_datasets"))
    parser.add_argument("--matmul-repeats", type=int, default=7,
                        help="timed repetitions of the matrix products (the best counts)")
    parser.add_argument("--gflops", type=float, default=None,
                        help="ignored: the matrix-product rate is now measured in the run")
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra config overrides for the project "
                        "(the limit assumes the 784-400-20 MLP: leave the model as it is)")
    args = parser.parse_args()

    if args.worker:  # one measurement in this fresh process; JSON on the last line of stdout
        kind, *rest = args.worker
        if kind == "matmul":
            print(json.dumps(matmul_rates(int(rest[0]), int(rest[1]))))
        else:
            batch, epochs, autocast = int(rest[0]), int(rest[1]), rest[2] == "1"
            print(json.dumps(torch_images_per_second(batch, epochs, autocast)))
        return

    if args.gflops is not None:
        log("--gflops is ignored: the matrix-product rate is measured in this run")
    command = shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT))
                          else sys.executable, os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    load_before = _load()
    started = time.strftime("%Y-%m-%d %H:%M")
    results = []
    square_rates = {"float32": 0.0, "bfloat16": 0.0}
    for batch in args.batch_sizes:
        log(f"batch {batch}: matrix-product rates")
        rates = _worker(["matmul", str(batch), str(args.matmul_repeats)], "the matrix-product measurement")
        row = {"batch": batch, "flop_per_image": rates["float32_flop_per_image"]}
        for name in ("project_float32", "project_mixed_bf16", "pytorch_float32", "pytorch_autocast_bf16"):
            log(f"batch {batch}: {name}")
            if name.startswith("project"):
                epochs = project_images_per_second(batch, args.epochs, args.data_dir, args.overrides,
                                                   mixed=name.endswith("bf16"))
            else:
                epochs = _worker(["torch", str(batch), str(args.epochs), "1" if name.endswith("bf16") else "0"],
                                 "PyTorch")
            row[name] = steady(epochs)
            row[name + "_epochs"] = [round(r) for r in epochs]
        # Timed again after the training runs; the better of the two windows counts, so
        # that a burst of other work during one of them does not lower the limit.
        log(f"batch {batch}: matrix-product rates, again")
        again = _worker(["matmul", str(batch), str(args.matmul_repeats)], "the matrix-product measurement")
        for name in ("float32", "bfloat16"):
            square_rates[name] = max(square_rates[name], rates[f"square_{name}"], again[f"square_{name}"])
            row[f"gflops_{name}_windows"] = [round(rates[name], 1), round(again[name], 1)]
            row[f"gflops_{name}"] = max(rates[name], again[name])
            row[f"limit_{name}"] = row[f"gflops_{name}"] * 1e9 / row["flop_per_image"]
        results.append(row)
        log(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}))
    load_after = _load()

    print(f"`{command}`\n")
    print(f"{started}; {_versions()}; load average (1, 5, 15 min) {load_before} before, "
          f"{load_after} after.\n")
    print("| batch | project float32 | project mixed bf16 | PyTorch float32 | PyTorch autocast bf16 "
          "| project best / PyTorch float32 | project best / PyTorch best "
          "| project float32, share of the float32 limit | project mixed, share of the bf16 limit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        project = {"float32": r["project_float32"], "mixed": r["project_mixed_bf16"]}
        torch_ = {"float32": r["pytorch_float32"], "autocast": r["pytorch_autocast_bf16"]}
        p_name, t_name = max(project, key=project.get), max(torch_, key=torch_.get)
        print(f"| {r['batch']} | {r['project_float32']:,.0f} | {r['project_mixed_bf16']:,.0f} "
              f"| {r['pytorch_float32']:,.0f} | {r['pytorch_autocast_bf16']:,.0f} "
              f"| {project[p_name] / torch_['float32']:.2f} ({p_name}) "
              f"| {project[p_name] / torch_[t_name]:.2f} ({p_name} / {t_name}) "
              f"| {r['project_float32'] / r['limit_float32']:.0%} of {r['limit_float32']:,.0f} "
              f"| {r['project_mixed_bf16'] / r['limit_bfloat16']:.0%} of {r['limit_bfloat16']:,.0f} |")
    print()
    print(("Images/s, median over the epochs after the first." if args.epochs > 1 else
           "Images/s of the one epoch (its first steps include tracing: use --epochs 3 or more).")
          + " The limits, measured in this run: "
          "one training step's matrix products at that batch size, timed alone in TensorFlow "
          f"(best of {args.matmul_repeats} after a warm-up, before and after that batch size's "
          "training runs), divided by their "
          f"{results[0]['flop_per_image'] / 1e6:.2f} MFLOP per image:\n")
    print("| batch | float32 matmul GFLOP/s | bf16 matmul GFLOP/s | float32 limit, images/s "
          "| bf16 limit, images/s |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['batch']} | {r['gflops_float32']:,.0f} | {r['gflops_bfloat16']:,.0f} "
              f"| {r['limit_float32']:,.0f} | {r['limit_bfloat16']:,.0f} |")
    print(f"\nFor reference, a {SQUARE}x{SQUARE} square product (best of the same windows): "
          f"float32 {square_rates['float32']:,.0f} GFLOP/s, bf16 {square_rates['bfloat16']:,.0f} GFLOP/s.")


if __name__ == "__main__":
    main()
