"""Training throughput of the project against plain PyTorch and JAX VAEs, side by side in one run.

The model is the 784-400-20 MLP VAE (Bernoulli, dynamically binarised Fashion-MNIST,
Adam 1e-3). Throughput is images per second, the median over the epochs after the
first. PyTorch runs its fast settings: fused Adam, `rand < p` binarisation, in-memory
tensors, 2 threads, in float32 and with bf16 autocast. JAX runs at its best too: one
jitted function per epoch, a `lax.scan` over the batches with the permutation, the
gather and the `uniform < p` binarisation inside it, on the images held on the device;
optax Adam; parameters and optimizer state donated; in float32 and with the dense
layers' products in bf16 (float32 loss, KL and optimizer, like autocast). The project
runs its own `vae train` command (the in-memory input, the custom training loop) with
evaluation cut to a minimum, in float32 and with `--mixed-precision` (bf16 matrix
products, float32 loss). The ratio columns compare the project's better precision with
PyTorch in float32 and with the best of PyTorch's and JAX's four runs.

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
one leaves behind (Keras' global precision policy, thread pools, JAX's XLA_FLAGS) reaches
the next.
Progress goes to stderr; stdout gets the Markdown for the README.

Usage (torch, JAX and optax are benchmark-only dependencies: `pip install -e ".[bench]"`,
or `pip install torch==2.13.0 "jax[cpu]==0.10.2" optax==0.2.8`):
    .venv/bin/python benchmarks/train_throughput.py --batch-sizes 128 1024 --epochs 3
    .venv/bin/python benchmarks/train_throughput.py --contenders jax pytorch --epochs 2
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


# --- JAX -------------------------------------------------------------------------------

# Appended to XLA_FLAGS in the JAX worker's own process, before JAX is imported (never in
# this process: TensorFlow reads XLA_FLAGS too). None, by measurement on the 2 cores here
# (jaxlib 0.10.2, float32, images/s of the 2nd and 3rd epochs, one window): the default
# (both cores) gave 30.6k/32.6k at batch 128 and 20.9k/22.7k at 1024;
# --xla_cpu_multi_thread_eigen=false the same within the noise, 29.8k/27.4k and
# 22.9k/24.9k (the products run in XLA's YNNPACK fusions, not in Eigen); one thread lost
# 40% at batch 128, 18.4k/17.3k (pinned to one core with taskset: this jaxlib rejects
# intra_op_parallelism_threads in XLA_FLAGS and has no other thread setting).
JAX_XLA_FLAGS = ""
JAX_LAYERS = {"fc1": (PIXELS, HIDDEN), "mean": (HIDDEN, LATENT), "log_var": (HIDDEN, LATENT),
              "fc3": (LATENT, HIDDEN), "fc4": (HIDDEN, PIXELS)}


def jax_init(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """The VAE's float32 parameters, {layer: {"w": (in, out), "b": (out,)}}, drawn as
    PyTorch's nn.Linear draws them (weights and biases uniform in +-1/sqrt(fan_in))."""
    rng = np.random.default_rng(seed)

    def uniform(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return rng.uniform(-fan_in**-0.5, fan_in**-0.5, shape).astype(np.float32)

    return {name: {"w": uniform((n_in, n_out), n_in), "b": uniform((n_out,), n_in)}
            for name, (n_in, n_out) in JAX_LAYERS.items()}


def jax_loss(params: dict, x, eps, bf16: bool = False):
    """The mean over the batch of the Bernoulli reconstruction loss (sigmoid
    cross-entropy with logits, summed over the pixels) plus the analytic Gaussian KL, with
    z = mean + exp(log_var / 2) * eps. With `bf16` the dense layers run in bfloat16
    (their inputs and parameters cast, as under PyTorch's autocast); the sample, the loss
    and the KL stay in float32, and so do the gradients (taken through the casts).

    The products accumulate and return in float32 (`preferred_element_type`), the bias
    is added in float32: XLA's CPU backend runs bf16 x bf16 -> float32 products on
    bfloat16 instructions, about twice the float32 rate here, while a product returning
    bf16 is computed in float32 between conversions (slower than plain float32). XLA
    still turns the backward products into float32 ones (even when a custom VJP writes
    them in bf16), so bf16 speeds up only the forward third of them."""
    import jax
    import jax.numpy as jnp
    import optax

    dtype = jnp.bfloat16 if bf16 else jnp.float32

    def dense(name: str, h):
        layer = params[name]
        product = jax.lax.dot(h.astype(dtype), layer["w"].astype(dtype), preferred_element_type=jnp.float32)
        return product + layer["b"]

    h = jax.nn.relu(dense("fc1", x))
    mean, log_var = dense("mean", h), dense("log_var", h)
    z = mean + jnp.exp(0.5 * log_var) * eps
    logits = dense("fc4", jax.nn.relu(dense("fc3", z)))
    recon = optax.sigmoid_binary_cross_entropy(logits, x).sum()
    kl = -0.5 * jnp.sum(1 + log_var - mean**2 - jnp.exp(log_var))
    return (recon + kl) / x.shape[0]


def jax_step(params: dict, opt_state, x, eps, optimizer, bf16: bool = False):
    """One Adam step on the batch `x` (binarised) with the noise `eps`: (params,
    opt_state, the loss before the step)."""
    import jax
    import optax

    loss, grads = jax.value_and_grad(jax_loss)(params, x, eps, bf16)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def jax_epoch(optimizer, batch: int, bf16: bool = False):
    """The jitted epoch, (params, opt_state, data, key) -> (params, opt_state, mean loss):
    a `lax.scan` over the batches in which the epoch's permutation, each batch's gather
    from `data` (the grey levels in [0, 1] on the device) and its fresh `uniform < p`
    binarisation all happen; the last incomplete batch is dropped, as in PyTorch's loop.
    The parameters and the optimizer state are donated."""
    import jax
    import jax.numpy as jnp

    def epoch(params, opt_state, data, key):
        steps = data.shape[0] // batch
        key_order, key_steps = jax.random.split(key)
        order = jax.random.permutation(key_order, data.shape[0])[:steps * batch].reshape(steps, batch)

        def step(carry, inputs):
            indices, key_step = inputs
            key_x, key_eps = jax.random.split(key_step)
            p = data[indices]
            x = (jax.random.uniform(key_x, p.shape) < p).astype(jnp.float32)
            eps = jax.random.normal(key_eps, (batch, LATENT))
            params, opt_state, loss = jax_step(*carry, x, eps, optimizer, bf16)
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(
            step, (params, opt_state), (order, jax.random.split(key_steps, steps)))
        return params, opt_state, losses.mean()

    return jax.jit(epoch, donate_argnums=(0, 1))


def jax_images_per_second(batch: int, epochs: int, bf16: bool = False) -> list[float]:
    """Images per second of each epoch of the JAX VAE (the first includes compiling)."""
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {JAX_XLA_FLAGS}".strip()
    import jax
    import optax

    data = jax.device_put(fashion_mnist_train().astype(np.float32) / 255.0)
    optimizer = optax.adam(1e-3)
    params = jax.device_put(jax_init(0))
    opt_state = optimizer.init(params)
    epoch = jax_epoch(optimizer, batch, bf16)
    key = jax.random.key(0)
    steps = data.shape[0] // batch
    rates = []
    for _ in range(epochs):
        key, key_epoch = jax.random.split(key)
        start = time.perf_counter()
        params, opt_state, _ = jax.block_until_ready(epoch(params, opt_state, data, key_epoch))
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


# Each column of the table: the contender it belongs to (what --contenders selects) and
# its short name in the ratio columns.
COLUMNS = {
    "project_float32": ("project", "float32"), "project_mixed_bf16": ("project", "mixed"),
    "pytorch_float32": ("pytorch", "PyTorch float32"),
    "pytorch_autocast_bf16": ("pytorch", "PyTorch autocast"),
    "jax_float32": ("jax", "JAX float32"), "jax_bf16": ("jax", "JAX bf16"),
}
CONTENDERS = ("project", "pytorch", "jax", "limit")
WORKERS = {"pytorch": ("torch", "PyTorch"), "jax": ("jax", "JAX")}  # worker kind, name in errors


def images_per_second(column: str, batch: int, epochs: int, data_dir: str,
                      overrides: list[str]) -> list[float]:
    """The images per second of each epoch of one column's run, in a fresh process."""
    contender, low_precision = COLUMNS[column][0], not column.endswith("float32")
    if contender == "project":
        return project_images_per_second(batch, epochs, data_dir, overrides, mixed=low_precision)
    kind, what = WORKERS[contender]
    return _worker([kind, str(batch), str(epochs), "1" if low_precision else "0"], what)


def _versions() -> str:
    from importlib.metadata import version

    found = {}
    for name in ("tensorflow", "torch", "jax"):
        try:
            found[name] = version(name)
        except Exception:  # noqa: BLE001 - only for the header
            found[name] = "?"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    return (f"{cpu}, {os.cpu_count()} cores; TensorFlow {found['tensorflow']}, PyTorch {found['torch']}, "
            f"JAX {found['jax']}")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cell(row: dict, column: str) -> str:
    return f"{row[column]:,.0f}" if column in row else "–"


def _best(row: dict, contenders: tuple[str, ...]) -> str | None:
    """The column of `row` with the most images per second among `contenders`' columns."""
    present = [c for c, (contender, _) in COLUMNS.items() if contender in contenders and c in row]
    return max(present, key=row.get) if present else None


def _ratio(row: dict, over: str | None, under: str | None, name_under: bool = True) -> str:
    if over is None or under is None:
        return "–"
    names = f"{COLUMNS[over][1]} / {COLUMNS[under][1]}" if name_under else COLUMNS[over][1]
    return f"{row[over] / row[under]:.2f} ({names})"


def _share(row: dict, column: str, limit: str) -> str:
    if column not in row or limit not in row:
        return "–"
    return f"{row[column] / row[limit]:.0%} of {row[limit]:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data-dir", default=os.path.expanduser("~/tensorflow_datasets"))
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS),
                        help="what to measure (default: all of them): the project's `vae train`, "
                        "PyTorch, JAX, and 'limit', the matrix-product rate; the tables show – "
                        "for what is left out")
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
            batch, epochs, low_precision = int(rest[0]), int(rest[1]), rest[2] == "1"
            measure = jax_images_per_second if kind == "jax" else torch_images_per_second
            print(json.dumps(measure(batch, epochs, low_precision)))
        return

    if args.gflops is not None:
        log("--gflops is ignored: the matrix-product rate is measured in this run")
    limit = "limit" in args.contenders
    command = shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT))
                          else sys.executable, os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    load_before = _load()
    started = time.strftime("%Y-%m-%d %H:%M")
    results = []
    square_rates = {"float32": 0.0, "bfloat16": 0.0}
    for batch in args.batch_sizes:
        row: dict = {"batch": batch}
        if limit:
            log(f"batch {batch}: matrix-product rates")
            rates = _worker(["matmul", str(batch), str(args.matmul_repeats)], "the matrix-product measurement")
            row["flop_per_image"] = rates["float32_flop_per_image"]
        for name, (contender, _) in COLUMNS.items():
            if contender not in args.contenders:
                continue
            log(f"batch {batch}: {name}")
            epochs = images_per_second(name, batch, args.epochs, args.data_dir, args.overrides)
            row[name] = steady(epochs)
            row[name + "_epochs"] = [round(r) for r in epochs]
        if limit:
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
          "| JAX float32 | JAX bf16 | project best / PyTorch float32 "
          "| project best / best of PyTorch and JAX "
          "| project float32, share of the float32 limit | project mixed, share of the bf16 limit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        project, others = _best(r, ("project",)), _best(r, ("pytorch", "jax"))
        print(f"| {r['batch']} | " + " | ".join(_cell(r, c) for c in COLUMNS)
              + f" | {_ratio(r, project, 'pytorch_float32' if 'pytorch_float32' in r else None, False)} "
              f"| {_ratio(r, project, others)} "
              f"| {_share(r, 'project_float32', 'limit_float32')} "
              f"| {_share(r, 'project_mixed_bf16', 'limit_bfloat16')} |")
    print()
    summary = ("Images/s, median over the epochs after the first." if args.epochs > 1 else
               "Images/s of the one epoch (its first steps include tracing: use --epochs 3 or more).")
    if not limit:
        print(summary)
        return
    print(summary + " The limits, measured in this run: "
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
