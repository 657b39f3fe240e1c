"""Would fusing the element-wise work of a training step pay? Side by side in one process.

The step of `step_profile.py` spends about a fifth of its time beside its matrix products
(the Bernoulli term, its gradient, the binarisation). This benchmark isolates that part:
a decoder's last layer (hidden (B, 400) x W (400, 784)) and its Bernoulli term, the
gradient of W taken and applied, `--steps` steps in one `tf.function` loop, each variant
best of `--repeats` calls:

- `matmuls only`: the forward and backward products, no likelihood (the floor);
- `TensorFlow ops`: the project's `model.losses.bernoulli_nll`, op by op (as `vae train`);
- `hand-written gradient`: the same term with its gradient written out,
  (sigmoid(logits) - x) x upstream, in a `tf.custom_gradient` (fewer ops backward);
- `XLA term`: the term compiled alone with `jit_compile=True`;
- `+ binarisation, TensorFlow ops` and `+ binarisation, XLA`: each step's input
  binarised in the graph by a stateless uniform draw, op by op or compiled.

Usage:
    .venv/bin/python benchmarks/elementwise_fusion.py --batch-sizes 128 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.losses import bernoulli_nll  # noqa: E402

HIDDEN, PIXELS = 400, 784


@tf.custom_gradient
def bernoulli_nll_written_gradient(x, logits):
    """`bernoulli_nll` with its gradient written out: d/dlogits = sigmoid(logits) - x."""
    def gradient(upstream):
        return None, (tf.sigmoid(logits) - x) * upstream[:, None]
    return tf.reduce_sum(tf.nn.softplus(logits) - logits * x, axis=-1), gradient


def binarise(x, seed):
    return tf.cast(tf.random.stateless_uniform(tf.shape(x), seed) < x, tf.float32)


def as_is(x, seed):
    return x


def no_term(x, logits):
    return tf.reduce_sum(logits, axis=-1)


VARIANTS = {
    "matmuls only": (no_term, as_is),
    "TensorFlow ops": (bernoulli_nll, as_is),
    "hand-written gradient": (bernoulli_nll_written_gradient, as_is),
    "XLA term": (tf.function(bernoulli_nll, jit_compile=True), as_is),
    "+ binarisation, TensorFlow ops": (bernoulli_nll, binarise),
    "+ binarisation, XLA": (bernoulli_nll, tf.function(binarise, jit_compile=True)),
}


def ms_per_step(batch: int, term, prepare, steps: int, repeats: int) -> float:
    generator = tf.random.Generator.from_seed(0)
    images = generator.uniform((batch, PIXELS))
    hidden = tf.nn.relu(generator.normal((batch, HIDDEN)))
    weights = tf.Variable(generator.normal((HIDDEN, PIXELS)) * 0.05)

    @tf.function
    def loop(count):
        total = tf.zeros(())
        for i in tf.range(count):
            x = prepare(images, tf.stack([tf.cast(i, tf.int64), tf.constant(1, tf.int64)]))
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(term(x, tf.matmul(hidden, weights)))
            weights.assign_sub(1e-6 * tape.gradient(loss, weights))
            total += loss
        return total

    loop(tf.constant(5)).numpy()  # trace and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        loop(tf.constant(steps)).numpy()
        best = min(best, (time.perf_counter() - start) / steps)
    return 1e3 * best


def check_gradients_agree() -> None:
    """The variants compute the same gradient as the project's term (else no comparison)."""
    generator = tf.random.Generator.from_seed(1)
    x = binarise(generator.uniform((64, PIXELS)), tf.constant([3, 1], tf.int64))
    logits = generator.normal((64, PIXELS)) * 3.0
    gradients = []
    for term in (bernoulli_nll, bernoulli_nll_written_gradient, VARIANTS["XLA term"][0]):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = tf.reduce_mean(term(x, logits))
        gradients.append(tape.gradient(loss, logits))
    for gradient in gradients[1:]:
        tf.debugging.assert_near(gradient, gradients[0], atol=1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--steps", type=int, default=100,
                        help="steps per timed call, 4x that below batch 512 (default: 100)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls, the best counts (default: 5)")
    args = parser.parse_args()
    check_gradients_agree()
    print("| batch | " + " | ".join(VARIANTS) + " |")
    print("| --- |" + " --- |" * len(VARIANTS))
    for batch in args.batch_sizes:
        steps = args.steps if batch >= 512 else 4 * args.steps
        figures = [ms_per_step(batch, term, prepare, steps, args.repeats) for term, prepare in VARIANTS.values()]
        print(f"| {batch} | " + " | ".join(f"{ms:.2f} ms" for ms in figures) + " |", flush=True)


if __name__ == "__main__":
    main()
