"""The `vae` console script: each subcommand parses its arguments and calls one function."""

from __future__ import annotations

import os

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) is noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

# Command-line flag -> config field it sets (applied after --config, before overrides).
TRAIN_FLAGS = {
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "download": "data.download",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "seed": "train.seed",
    "steps_per_epoch": "train.steps_per_epoch",
    "iwae_k": "train.iwae_k",
    "eval_examples": "train.eval_examples",
    "architecture": "model.architecture",
    "latent_dim": "model.latent_dim",
    "likelihood": "model.likelihood",
    "strategy": "train.strategy",
    "cpu_replicas": "train.cpu_replicas",
    "mixed_precision": "train.mixed_precision",
    "jit": "train.jit",
    "checkpoint_every_steps": "train.checkpoint_every_steps",
    "early_stopping_patience": "train.early_stopping_patience",
}


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train, evaluate and save a VAE in a workdir",
        description="Trains a VAE, evaluates it on the test split (negative ELBO, IWAE NLL), "
        "saves the model, its config, metrics.json and pictures in --workdir. Settings come "
        "from the defaults, then --config FILE, then the flags, then SECTION.FIELD=VALUE "
        "overrides (e.g. model.hidden_units=[512,256] train.kl_warmup_steps=1000).",
    )
    p.add_argument("--workdir", required=True, help="folder for the run's outputs")
    p.add_argument("--config", help="a JSON config file (see config.json of any run)")
    p.add_argument("--dataset", help="tfds image dataset (default fashion_mnist)")
    p.add_argument("--data-dir", help="tfds data directory")
    p.add_argument("--download", action="store_true", default=None,
                   help="let tensorflow-datasets download the dataset (needs network)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--iwae-k", type=int, help="importance samples of the test NLL")
    p.add_argument("--eval-examples", type=int, help="evaluate on the first N test images")
    p.add_argument("--architecture", choices=["mlp", "conv"])
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--likelihood", choices=["bernoulli", "gaussian"])
    p.add_argument("--strategy", choices=["auto", "default", "mirrored", "multiworker"],
                   help="tf.distribute strategy (auto: multiworker with TF_CONFIG, mirrored "
                   "with several GPUs or --cpu-replicas, else default)")
    p.add_argument("--cpu-replicas", type=int, help="split the CPU into N logical devices")
    p.add_argument("--mixed-precision", action="store_true", default=None)
    p.add_argument("--jit", action="store_true", default=None, help="XLA-compile the step")
    p.add_argument("--checkpoint-every-steps", type=int,
                   help="checkpoint every N steps as well as every epoch")
    p.add_argument("--early-stopping-patience", type=int,
                   help="stop after N epochs without a better validation negative ELBO")
    p.add_argument("--overwrite", action="store_true",
                   help="train again in a workdir that holds a finished run")
    p.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE")
    p.set_defaults(func=run_train)


def train_config(args):
    """The run config of `vae train`: defaults, --config, flags, then overrides."""
    from pipelines.config import resolve_config

    flags = [
        f"{field}={json.dumps(getattr(args, flag))}"
        for flag, field in TRAIN_FLAGS.items()
        if getattr(args, flag) is not None
    ]
    return resolve_config(args.config, flags + list(args.overrides))


def run_train(args) -> int:
    from pipelines.train import train

    metrics = train(train_config(args), args.workdir, overwrite=args.overwrite)
    if not metrics:
        print("worker finished; the chief writes the model, metrics and pictures")
        return 0
    print(
        f"test negative ELBO {metrics['test_nelbo']:.2f} nats, "
        f"IWAE NLL (k={metrics['iwae_k']}) {metrics['test_iwae_nll']:.2f} nats, "
        f"{metrics['active_units']} active units, "
        f"{metrics['train_images_per_second']:.0f} images/s"
    )
    print(f"outputs in {os.path.abspath(args.workdir)}: " + ", ".join(
        ["model.keras", "config.json", "metrics.json", *metrics["pictures"]]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae", description="A production VAE on TensorFlow/Keras.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    from pipelines import encode_cli, tune_cli
    from serving import cli as serving_cli

    tune_cli.register(subparsers)
    serving_cli.register(subparsers)  # export, serve, generate
    encode_cli.register(subparsers)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from model.config import ConfigError
    from pipelines.data import DataError
    from pipelines.distribute import DistributionError
    from pipelines.train import WorkdirError

    return ConfigError, DataError, DistributionError, WorkdirError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("absl", "tensorflow"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except _user_errors() as err:
        print(f"vae {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
