"""`vae train` and `vae export`: their flags, and the one library call each makes.

Importing this module loads neither TensorFlow nor Keras (`vae --help` stays fast).
"""

from __future__ import annotations

import argparse
import json
import os

from model.config import ARCHITECTURES, CONDITIONS, KINDS, LIKELIHOODS
from pipelines.config import STRATEGIES

EXAMPLES = """\
examples:
  vae train --workdir runs/fmnist --epochs 10
  vae train --workdir runs/photos --images photos/ --image-size 64x64 --likelihood gaussian
  vae train --workdir runs/cvae --images photos/ --image-size 64x64 --kind cvae   # subfolders = classes
  vae train --workdir runs/arrays --npy 'data/*.npy' --labels labels.npy --skip-bad
  vae train --workdir runs/2d --latent-dim 2 --epochs 20          # + latent-space plots
  vae train --workdir runs/conv --config my.json model.conv_filters=[32,64] train.learning_rate=5e-4
  vae train --workdir runs/a --cpu-replicas 2 train.checkpoint_every_steps=500 train.jit=true
"""

# The flags users type often, and the config field each sets (applied after --config,
# before the SECTION.FIELD=VALUE overrides, which reach every other field).
TRAIN_FLAGS = {
    "download": "data.download",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "seed": "train.seed",
    "kind": "model.kind",
    "condition": "model.condition",
    "labelled_per_class": "data.labelled_per_class",
    "labelled_share": "data.labelled_share",
    "architecture": "model.architecture",
    "latent_dim": "model.latent_dim",
    "likelihood": "model.likelihood",
    "strategy": "train.strategy",
    "cpu_replicas": "train.cpu_replicas",
    "mixed_precision": "train.mixed_precision",
}


def register(subparsers) -> None:
    """Adds `train` and `export` to the `vae` parser."""
    _add_train(subparsers)
    _add_export(subparsers)


# === train ===
def _add_train(subparsers) -> None:
    from pipelines.sources.cli import add_input_flags

    p = subparsers.add_parser(
        "train",
        help="train, evaluate, save and export a VAE in a workdir",
        description="Trains a VAE, evaluates it on the test split (negative ELBO, IWAE NLL), "
        "saves the model, its config, history.json, metrics.json and pictures in --workdir, and "
        "exports it as a new SavedModel version under WORKDIR/exports/. Settings come from the "
        "defaults, then --config FILE, then the flags, then SECTION.FIELD=VALUE overrides "
        "(model.*, data.*, train.*; e.g. model.hidden_units=[512,256] model.kl_warmup_steps=1000). "
        "Run the same command again to resume a killed run.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", required=True, help="folder for the run's outputs")
    p.add_argument("--config", help="a JSON config file (see config.json of any run)")
    add_input_flags(p, required=False, training=True, default_note="; default --dataset fashion_mnist")
    p.add_argument("--download", action="store_true", default=None,
                   help="let tensorflow-datasets download the dataset (needs network)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--kind", choices=KINDS,
                   help="vae (default), cvae (conditional) or m2 (semi-supervised)")
    p.add_argument("--condition", choices=CONDITIONS,
                   help="what a cvae is conditioned on: the label, or an observed half")
    p.add_argument("--labelled-per-class", type=int,
                   help="m2: labelled training images per class (the rest get the label -1)")
    p.add_argument("--labelled-share", type=float, metavar="S",
                   help="m2 with --labelled-per-class: the share of every batch that is labelled "
                   "(default: the natural proportion)")
    p.add_argument("--architecture", choices=ARCHITECTURES)
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--likelihood", choices=LIKELIHOODS)
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="tf.distribute strategy (auto: multiworker with TF_CONFIG, mirrored "
                   "with several GPUs or --cpu-replicas, else default)")
    p.add_argument("--cpu-replicas", type=int, help="split the CPU into N logical devices")
    p.add_argument("--mixed-precision", action="store_true", default=None,
                   help="bfloat16 (CPU) or float16 (GPU) matrix products; losses stay float32")
    p.add_argument("--overwrite", action="store_true",
                   help="train again in a workdir that holds a finished run")
    p.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE")
    p.set_defaults(func=run_train)


def train_config(args):
    """The run config of `vae train`: defaults, --config, flags, then overrides."""
    from core.config import ConfigError
    from pipelines.config import resolve_config
    from pipelines.sources.cli import data_overrides

    flags = [f"{field}={json.dumps(getattr(args, flag))}"
             for flag, field in TRAIN_FLAGS.items() if getattr(args, flag) is not None]
    return resolve_config(args.config, data_overrides(args, ConfigError) + flags + list(args.overrides))


def run_train(args) -> int:
    from pipelines.train import train
    from pipelines.workdir import CONFIG_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE

    metrics = train(train_config(args), args.workdir, overwrite=args.overwrite)
    if not metrics:
        print("worker finished; the chief writes the model, metrics and pictures")
        return 0
    accuracy = f", test accuracy {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else ""
    print(
        f"test negative ELBO {metrics['test_nelbo']:.2f} nats, "
        f"IWAE NLL (k={metrics['iwae_k']}) {metrics['test_iwae_nll']:.2f} nats, "
        f"{metrics['active_units']} active units{accuracy}, "
        f"{metrics['train_images_per_second']:.0f} images/s"
    )
    print(f"outputs in {os.path.abspath(args.workdir)}: " + ", ".join(
        [MODEL_FILE, CONFIG_FILE, HISTORY_FILE, METRICS_FILE, *metrics["pictures"]]))
    if metrics.get("export"):
        print(f"exported to {metrics['export']}")
    else:
        print(f"not exported: {metrics.get('export_skipped')}")
    return 0


# === export ===
def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained workdir as a versioned SavedModel",
        description="Writes <base-dir>/<model-name>/<version>/ (SavedModel with the encode, decode, "
        "generate, reconstruct and log_likelihood signatures, plus assets.extra/ with the run "
        "config, metrics and TF Serving warm-up requests), atomically.",
    )
    p.add_argument("--workdir", required=True, help="a finished `vae train` workdir")
    p.add_argument("--base-dir", required=True, help="export root (e.g. exports)")
    p.add_argument("--model-name", help="the served name (default: the run's train.model_name)")
    p.add_argument("--version", type=_positive, help="version number (default: the next one)")
    p.set_defaults(func=run_export)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def run_export(args) -> int:
    from core.errors import UserError
    from pipelines.train import export_run

    try:
        path = export_run(args.workdir, args.base_dir, args.model_name, args.version)
    except FileExistsError as err:
        raise UserError(f"{err}; choose another --version, or leave it out for the next one") from None
    print(path)
    return 0
