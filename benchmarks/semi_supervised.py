"""The semi-supervised and conditional claims on Fashion-MNIST, one run each, through `vae train`'s code.

1. M2 with `--labelled-per-class` labels per class (the rest of the training split
   unlabelled, label -1) trained for `--budget` seconds of steps, against the same
   classifier network (`model.classifiers`, same widths) trained on the labelled images
   alone (dynamically binarised like M2's inputs, shifted like them with
   `model.classifier_shift`; Adam, batch 100). Both are scored on
   all 10,000 test images, binarised once. The baseline's accuracy is reported after
   each of several epoch counts and its best one is the figure compared, which flatters
   the baseline (the epoch count is chosen on the test set).
2. A label CVAE trained for `--cvae-budget` seconds: 100 images generated per class are
   classified by a separately trained convolutional classifier (`--judge-epochs` on the
   whole grey-level training split); the figure is the share recognised as the class
   they were generated for, and its ratio to the judge's accuracy on the real test
   images (target >= 0.95).
3. The classification accuracy score of the label CVAE, M2 and M1+M2 trained by the
   parts listed before it: a CNN trained only on `--cas-images` generated images, tested
   on the real test split, beside the same CNN trained on real images (the whole training
   split, and the 1,000 labelled ones).
4. A `left_half` CVAE trained for `--cvae-budget` seconds completes the right half of
   every test image from its (binarised) left half; the mean squared error against the
   grey-level truth (the mean of 16 completions, and the decoder's mean at z = 0) is
   compared with filling in the training split's mean image.
5. M1, the seed's simple route: a plain VAE (kind vae, overrides `--m1`) trained for
   `--m1-budget` seconds without labels encodes the images, and two classifiers
   (logistic regression, one Dense layer; an MLP, Dense 256 relu + Dense 10; Adam 1e-3,
   batch 100) are trained on the codes of M2's labelled images (`labelled.select` with
   `train.seed`, over the same training split), each epoch on a fresh draw
   z = mu + sigma * eps of every code. The epoch count (`--m1-epochs`) is chosen on a
   stratified fifth of the labelled images held out (trained on the rest); the
   classifier is then retrained on all of them for that count and scored on the test
   split's z_mean (grey-level images).
6. M1+M2 (`--kind m1m2`, overrides `--m1m2`) with M2's labels, each stage trained for
   half of `--budget`, scored by its `classify` on the test images; with
   `--m1m2 train.m1_workdir=PATH` (a finished M1, e.g. the `m1` part's), only the second
   stage trains, for half of `--budget`.

Usage (never two benchmarks at once on a 2-core machine):
    flock /tmp/vae-bench.lock .venv/bin/python benchmarks/semi_supervised.py \\
        --out runs/semi_supervised --json runs/semi_supervised/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def settings(budget: float, data_dir: str | None, *overrides: str):
    from pipelines.config import RunConfig

    config = RunConfig()
    for assignment in ("train.epochs=100000", f"train.max_train_seconds={budget}", "train.iwae_k=100",
                       "train.eval_examples=2000", "train.tensorboard=false", *overrides,
                       *([f'data.data_dir="{data_dir}"'] if data_dir else [])):
        config = config.override(assignment)
    return config.check_sections()


def test_images(config, binarize: bool):
    """All test images and labels as NumPy arrays (binarised once, as `vae train` scores)."""
    import numpy as np

    from pipelines import data

    builder = data.get_builder(config.data)
    ds = data.evaluation_dataset(builder, config.data, config.data.test_split, 1000,
                                 binarize=binarize, seed=config.train.seed + 2)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


def train_images(config):
    """The training split's grey-level images (N, H, W, C) float32 and labels (N,)."""
    import numpy as np

    from pipelines import data

    builder = data.get_builder(config.data)
    ds = data.evaluation_dataset(builder, config.data, config.data.train_split, 5000, binarize=False, seed=0)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(images), np.concatenate(labels)


# === 1. M2 against its classifier on the labelled images alone ===
def m2_vs_supervised(args, out: Path) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from model.classifiers import build_classifier, build_shift
    from pipelines.train import load_saved_model, train

    overrides = ["model.kind=m2", f"data.labelled_per_class={args.labelled_per_class}", *args.m2]
    config = settings(args.budget, args.data_dir, *overrides)
    metrics = train(config, out / "m2", overwrite=True, verbose=0)
    m2 = load_saved_model(out / "m2" / "model.keras")
    images, labels = test_images(config, binarize=True)
    predicted = np.concatenate([np.argmax(m2.classify(images[i:i + 1000]), -1) for i in range(0, len(images), 1000)])
    m2_accuracy = float(np.mean(predicted == labels))

    result = {
        "labelled_per_class": args.labelled_per_class, "alpha": config_alpha(out / "m2"),
        "m2_test_accuracy": m2_accuracy, "m2_train_seconds": metrics["train_seconds"],
        "m2_optimizer_steps": metrics["optimizer_steps"], "m2_epochs": metrics["epochs"],
        "m2_test_marginal_iwae_nll_2000_k100": metrics.get("test_marginal_iwae_nll"),
    }
    if args.skip_baseline:
        return result
    record = json.loads((out / "m2" / "labelled.json").read_text())
    train_x, train_y = train_images(config)
    x, y = train_x[record["indices"]], train_y[record["indices"]]
    keras.utils.set_random_seed(config.train.seed)
    shift = build_shift(config.model, config.train.seed)  # M2's training-time shift, if any, here too
    classifier = keras.Sequential([keras.Input(x.shape[1:]), *([shift] if shift else []),
                                   build_classifier(config.model)])
    classifier.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batches = tf.data.Dataset.from_tensor_slices((x, y)).repeat().shuffle(len(x), seed=0).batch(100)
    keys = tf.data.Dataset.random(seed=0, rerandomize_each_iteration=True)  # a fresh draw per batch
    binarised = tf.data.Dataset.zip(batches, keys).map(lambda batch, key: (tf.cast(
        tf.random.stateless_uniform(tf.shape(batch[0]), tf.stack([key, 0])) < batch[0], tf.float32), batch[1]))
    steps, done, curve = len(x) // 100, 0, {}
    for epochs in args.baseline_epochs:
        classifier.fit(binarised, epochs=epochs - done, steps_per_epoch=steps, verbose=0)
        done = epochs
        curve[epochs] = float(classifier.evaluate(images, labels, batch_size=1000, verbose=0)[1])
    return {
        **result,
        "supervised_only_accuracy_by_epochs": curve,
        "supervised_only_best_accuracy": max(curve.values()),
    }


def m1m2_accuracy(args, out: Path) -> dict:
    """M1+M2 (`vae train --kind m1m2`) with the same labels as M2: each stage trains for
    half of `--budget`, so the two together take what M2 takes; scored by `classify` on
    the test images binarised once (as M2) and grey-level."""
    import numpy as np

    from pipelines.train import load_saved_model, train

    overrides = ["model.kind=m1m2", f"data.labelled_per_class={args.labelled_per_class}", *args.m1m2]
    config = settings(args.budget / 2, args.data_dir, *overrides)
    metrics = train(config, out / "m1m2", overwrite=True, verbose=0)
    m1_folder = Path(config.train.m1_workdir) if config.train.m1_workdir else out / "m1m2" / "m1"
    m1_metrics = json.loads((m1_folder / "metrics.json").read_text())
    model = load_saved_model(out / "m1m2" / "model.keras")

    def accuracy(binarize: bool) -> float:
        images, labels = test_images(config, binarize=binarize)
        predicted = np.concatenate([np.argmax(model.classify(images[i:i + 1000]), -1)
                                    for i in range(0, len(images), 1000)])
        return float(np.mean(predicted == labels))

    return {"labelled_per_class": args.labelled_per_class, "alpha": config_alpha(out / "m1m2"),
            "m1m2_test_accuracy": accuracy(True), "m1m2_test_accuracy_grey": accuracy(False),
            "m1_train_seconds": m1_metrics["train_seconds"], "m1_epochs": m1_metrics["epochs"],
            "m1_test_iwae_nll_2000_k100": m1_metrics.get("test_iwae_nll"),
            "m2_stage_train_seconds": metrics["train_seconds"], "m2_stage_epochs": metrics["epochs"],
            "m1m2_test_marginal_iwae_nll_2000_k100": metrics.get("test_marginal_iwae_nll")}


def config_alpha(workdir: Path) -> float:
    return json.loads((workdir / "config.json").read_text())["model"]["m2"]["alpha"]


def conv_classifier(x, y, epochs: int, seed: int):
    """The judge and the CAS network: a small CNN (`ConvClassifier`, 32-64 filters, 128
    units) trained on (x, y) with Adam 1e-3, batch 128; its `predict` gives logits."""
    import keras

    from model.classifiers import ConvClassifier

    keras.utils.set_random_seed(seed)
    network = keras.Sequential([keras.Input(x.shape[1:]), ConvClassifier(10, (32, 64), (128,))])
    network.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    network.fit(x, y, batch_size=128, epochs=epochs, verbose=0)
    return network


# === 2. CVAE: generated classes recognised by a separate classifier ===
def cvae_generated_classes(args, out: Path) -> dict:
    import numpy as np

    from pipelines.train import load_saved_model, train

    config = settings(args.cvae_budget, args.data_dir, "model.kind=cvae", *args.cvae)
    metrics = train(config, out / "cvae_label", overwrite=True, verbose=0)
    cvae = load_saved_model(out / "cvae_label" / "model.keras")
    train_x, train_y = train_images(config)
    test_x, test_y = test_images(config, binarize=False)
    judge = conv_classifier(train_x, train_y, args.judge_epochs, config.train.seed)
    judge_accuracy = float(judge.evaluate(test_x, test_y, batch_size=1000, verbose=0)[1])
    named = np.argmax(judge.predict(test_x, batch_size=1000, verbose=0), -1)  # real test images, by class
    judge_per_class = [float(np.mean(named[test_y == k] == k)) for k in range(10)]
    wanted = np.repeat(np.arange(10), 100)
    generated = np.asarray(cvae.generate(wanted, seed=0))
    recognised = np.argmax(judge.predict(generated, batch_size=1000, verbose=0), -1)
    per_class = [float(np.mean(recognised[wanted == k] == k)) for k in range(10)]
    return {"cvae_train_seconds": metrics["train_seconds"], "cvae_test_iwae_nll_given_y": metrics["test_iwae_nll"],
            "judge_test_accuracy": judge_accuracy, "judge_test_accuracy_per_class": judge_per_class,
            "generated_class_accuracy": float(np.mean(recognised == wanted)),
            # the target (re-based): >= 0.95 of the share of real test images the judge names right
            "generated_vs_real_accuracy": float(np.mean(recognised == wanted)) / judge_accuracy,
            "generated_class_accuracy_per_class": per_class}


# === 3. Classification accuracy score of the generators ===
def classification_accuracy_score(args, out: Path) -> dict:
    """CAS (Ravuri and Vinyals, 2019): the CNN of `conv_classifier` trained only on
    `--cas-images` images generated with their requested labels (decoder means, an equal
    number per class) and tested on the real grey-level test split. Each conditional
    generator trained by this run (`out`'s `cvae_label`, `m2` and `m1m2` workdirs) is scored, and
    the same CNN trained on real images, the whole training split and the 1,000 labelled
    ones (M2's, else drawn with seed 0; steps matched to the generated set), is the
    reference."""
    import numpy as np

    from pipelines import labelled
    from pipelines.train import load_saved_model

    config = settings(args.cvae_budget, args.data_dir)
    train_x, train_y = train_images(config)
    test_x, test_y = test_images(config, binarize=False)
    seed, epochs = config.train.seed, args.cas_epochs

    def accuracy(x, y, epochs: int) -> float:
        network = conv_classifier(x, y, epochs, seed)
        return float(network.evaluate(test_x, test_y, batch_size=1000, verbose=0)[1])

    wanted = np.repeat(np.arange(10), args.cas_images // 10)
    scores = {}
    for name in ("cvae_label", "m2", "m1m2"):
        if not (out / name / "model.keras").exists():
            continue
        generator = load_saved_model(out / name / "model.keras")
        generated = np.concatenate([np.asarray(generator.generate(wanted[i:i + 1000], seed=[seed, i]))
                                    for i in range(0, len(wanted), 1000)])
        scores[f"cas_{name}"] = accuracy(generated, wanted, epochs)
    record = out / "m2" / "labelled.json"
    indices = (np.asarray(json.loads(record.read_text())["indices"]) if record.exists()
               else labelled.select(train_y, args.labelled_per_class, 10, seed=0))
    steps_matched = max(1, round(epochs * len(wanted) / len(indices)))
    return {"cas_images": len(wanted), "cas_epochs": epochs, **scores,
            "real_all_train_accuracy": accuracy(train_x, train_y, epochs),
            "real_labelled_accuracy": accuracy(train_x[indices], train_y[indices], steps_matched),
            "real_labelled_epochs": steps_matched}


# === 4. Half completion against the mean image ===
def half_completion(args, out: Path) -> dict:
    import keras
    import numpy as np

    from pipelines.train import load_saved_model, train

    config = settings(args.cvae_budget, args.data_dir, "model.kind=cvae", "model.condition=left_half", *args.cvae)
    metrics = train(config, out / "cvae_left_half", overwrite=True, verbose=0)
    model = load_saved_model(out / "cvae_left_half" / "model.keras")
    half = model.condition
    train_x, _ = train_images(config)
    grey, _ = test_images(config, binarize=False)
    binary, _ = test_images(config, binarize=True)
    truth = np.asarray(half.hidden(grey))  # (N, 28, 14, 1)
    mean_fill = np.asarray(half.hidden(train_x)).mean(axis=0, keepdims=True)
    draws = [np.asarray(half.hidden(model.complete(binary, seed=s))) for s in range(16)]
    at_mode = np.asarray(half.hidden(model.complete(binary, temperature=0.0)))
    mse = lambda guess: float(np.mean((guess - truth) ** 2))  # noqa: E731
    return {"half_train_seconds": metrics["train_seconds"], "half_test_iwae_nll_of_right_half": metrics["test_iwae_nll"],
            "mse_mean_of_16_completions": mse(np.mean(draws, axis=0)), "mse_one_completion": mse(draws[0]),
            "mse_decoder_mean_at_z0": mse(at_mode), "mse_mean_image_fill": mse(mean_fill)}


# === 5. M1: classifiers on a plain VAE's codes ===
def m1_codes(args, out: Path) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from pipelines import labelled
    from pipelines.train import load_saved_model, train

    config = settings(args.m1_budget, args.data_dir, "model.kind=vae", *args.m1)
    metrics = train(config, out / "m1", overwrite=True, verbose=0)
    m1 = load_saved_model(out / "m1" / "model.keras")
    seed = config.train.seed

    def encode(images):  # (z_mean, z_log_var), each (N, latent_dim)
        chunks = [m1.encode(images[i:i + 2000]) for i in range(0, len(images), 2000)]
        return tuple(np.concatenate([np.asarray(chunk[j]) for chunk in chunks]) for j in (0, 1))

    train_x, train_y = train_images(config)  # data.train_split, the order M2's subset indexes
    test_x, test_y = test_images(config, binarize=False)
    indices = labelled.select(train_y, args.labelled_per_class, 10, seed=seed)  # M2's 1,000 images
    train_mean, train_log_var = encode(train_x)
    test_mean, _ = encode(test_x)
    mean, log_var, y = train_mean[indices], train_log_var[indices], train_y[indices]
    rng = np.random.default_rng(seed)  # a stratified fifth of the labelled images held out
    held = np.zeros(len(y), bool)
    for k in range(10):
        members = rng.permutation(np.flatnonzero(y == k))
        held[members[:len(members) // 5]] = True

    def fit(layers, rows, schedule):
        """Trains a fresh network on the codes of `rows` through the cumulative epoch
        counts of `schedule`, yielding (network, epochs) after each."""
        keras.utils.set_random_seed(seed)
        network = keras.Sequential([keras.Input(mean.shape[1:]), *layers()])
        network.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        codes = tf.data.Dataset.from_tensor_slices((mean[rows], np.exp(0.5 * log_var[rows]), y[rows]))
        batches = codes.shuffle(len(codes), seed=seed, reshuffle_each_iteration=True).repeat().batch(100)
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)  # a fresh eps per batch
        drawn = tf.data.Dataset.zip(batches, keys).map(lambda batch, key: (
            batch[0] + batch[1] * tf.random.stateless_normal(tf.shape(batch[0]), tf.stack([key, 0])), batch[2]))
        steps, done = max(1, len(codes) // 100), 0
        for epochs in schedule:
            network.fit(drawn, epochs=epochs - done, steps_per_epoch=steps, verbose=0)
            done = epochs
            yield network, epochs

    classifiers = {"logistic": lambda: [keras.layers.Dense(10)],
                   "mlp": lambda: [keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)]}
    result = {
        "labelled_per_class": args.labelled_per_class, "latent_dim": config.model.latent_dim,
        "architecture": config.model.architecture, "m1_train_seconds": metrics["train_seconds"],
        "m1_optimizer_steps": metrics["optimizer_steps"], "m1_epochs": metrics["epochs"],
        "m1_test_iwae_nll_2000_k100": metrics.get("test_iwae_nll"),
        "held_out_images": int(held.sum()),
    }
    for name, layers in classifiers.items():
        curve = {epochs: float(network.evaluate(mean[held], y[held], batch_size=1000, verbose=0)[1])
                 for network, epochs in fit(layers, ~held, sorted(args.m1_epochs))}
        chosen = max(curve, key=curve.get)  # the fewest epochs among equal accuracies
        network, _ = list(fit(layers, np.ones(len(y), bool), [chosen]))[-1]
        result |= {f"{name}_held_out_accuracy_by_epochs": curve, f"{name}_epochs": chosen,
                   f"{name}_test_accuracy": float(network.evaluate(test_mean, test_y, batch_size=1000,
                                                                   verbose=0)[1])}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="M2's seconds of training steps")
    parser.add_argument("--cvae-budget", type=float, default=300.0, help="each CVAE's seconds of training")
    parser.add_argument("--m1-budget", type=float, default=600.0, help="M1's seconds of training")
    parser.add_argument("--m1-epochs", type=int, nargs="+", default=[25, 50, 100, 200, 400],
                        help="epoch counts of M1's classifiers, one chosen on held-out labelled images")
    parser.add_argument("--labelled-per-class", type=int, default=100)
    parser.add_argument("--baseline-epochs", type=int, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--judge-epochs", type=int, default=3)
    parser.add_argument("--cas-images", type=int, default=50000, help="images generated per CAS training set")
    parser.add_argument("--cas-epochs", type=int, default=5, help="epochs of the CAS network")
    parser.add_argument("--skip-baseline", action="store_true", help="M2 alone (e.g. to compare alphas)")
    parser.add_argument("--m2", nargs="*", default=[], help="extra overrides of the M2 run")
    parser.add_argument("--m1m2", nargs="*", default=[], help="extra overrides of the M1+M2 run")
    parser.add_argument("--cvae", nargs="*", default=[], help="extra overrides of both CVAE runs")
    parser.add_argument("--m1", nargs="*", default=[], help="extra overrides of the M1 run")
    parser.add_argument("--parts", nargs="+", default=["m2", "cvae", "cas", "half"],
                        choices=["m2", "m1m2", "m1", "cvae", "cas", "half"])
    parser.add_argument("--out", default="runs/semi_supervised")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    out, started = Path(args.out), time.perf_counter()
    parts = {"m2": m2_vs_supervised, "cvae": cvae_generated_classes, "cas": classification_accuracy_score,
             "half": half_completion, "m1": m1_codes, "m1m2": m1m2_accuracy}
    results = {}
    for name in args.parts:
        results[name] = parts[name](args, out)
        print(json.dumps({name: results[name]}), flush=True)
    results["wall_seconds"] = time.perf_counter() - started
    results["command"] = {k: v for k, v in vars(args).items()}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
