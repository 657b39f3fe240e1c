"""`vae train` and `vae export`: their flags, and the one library call each makes.

Where the flags of `vae train` are declared, top to bottom: the shared model-kind flags
(`add_kind_flags`, also used by `vae tune`), `_add_train` (the run's flags, the flags that
set a config field, `TRAIN_FLAGS`), the old spellings of removed flags (`REMOVED_FLAGS`),
then the positional overrides. Importing this module loads neither TensorFlow nor Keras
(`vae --help` stays fast).
"""

from __future__ import annotations

import argparse
import json
import os

from core.cli import add_deprecated_flag, add_removed_flag, config_default
from model.config import ARCHITECTURES, CONDITIONS, LIKELIHOODS
from model.kinds import REGISTRY as KINDS
from pipelines.config import STRATEGIES, DataConfig, RunConfig

EXAMPLES = """\
Examples:
  vae train --workdir runs/fmnist --epochs 10
  vae train --workdir runs/photos --images photos/ --image-size 64x64 --likelihood gaussian
  vae train --workdir runs/cvae --images photos/ --image-size 64x64 --kind cvae   # subfolders = classes
  vae train --workdir runs/m2 --kind m2 --labelled-per-class 100
  vae train --workdir runs/m1m2 --kind m1m2 --labelled-per-class 100   # M1 in runs/m1m2/m1, then M2
  vae train --workdir runs/arrays --npy 'data/*.npy' --labels-file labels.npy --skip-bad
  vae train --workdir runs/2d --latent-dim 2 --epochs 20          # + latent-space plots
  vae train --workdir runs/conv --config my.json model.conv_filters=[32,64] train.learning_rate=5e-4
  vae train --workdir runs/a --cpu-replicas 2 train.checkpoint_every_steps=500 train.jit=true
  vae train --workdir runs/a --epochs 3 --print-config      # the effective config, no training
"""

# The model-kind flags `vae train` and `vae tune` share, and the config field each sets.
KIND_FLAGS = {
    "kind": "model.kind",
    "condition": "model.condition",
    "labelled_per_class": "data.labelled_per_class",
    "labelled_share": "data.labelled_share",
}

# The flags users type often, and the config field each sets (applied after --config,
# before the SECTION.FIELD=VALUE overrides, which reach every other field).
TRAIN_FLAGS = {
    "download": "data.download",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "seed": "train.seed",
    **KIND_FLAGS,
    "architecture": "model.architecture",
    "latent_dim": "model.latent_dim",
    "likelihood": "model.likelihood",
    "strategy": "train.strategy",
    "cpu_replicas": "train.cpu_replicas",
    "mixed_precision": "train.mixed_precision",
    "iwae_k": "train.iwae_k",
    "eval_examples": "train.eval_examples",
}

# Flags of `vae train` removed when the overrides took their place; scripts still use
# them, so each parses (hidden, with a warning) as its override: (flag, field, type).
REMOVED_FLAGS = (
    ("--steps-per-epoch", "train.steps_per_epoch", int),
    ("--jit", "train.jit", None),  # a switch
    ("--checkpoint-every-steps", "train.checkpoint_every_steps", int),
    ("--early-stopping-patience", "train.early_stopping_patience", int),
)

OVERRIDES_HELP = ("config overrides applied last, e.g. model.hidden_units=[512,256] train.jit=true "
                  "(every field: docs/reference/config.md; default: none)")


def _default(field: str) -> str:
    """"default VALUE, section.field" of a `section.field` of the run config."""
    section, name = field.split(".")
    return config_default(getattr(RunConfig(), section), name, section)


def register(subparsers) -> None:
    """Adds `train` and `export` to the `vae` parser."""
    _add_train(subparsers)
    _add_export(subparsers)


def add_kind_flags(p) -> None:
    """The model-kind flags of `vae train` and `vae tune` (fields in `KIND_FLAGS`)."""
    kinds = p.add_argument_group("model kind")
    kinds.add_argument("--kind", choices=tuple(KINDS),
                       help="; ".join(f"{name}: {kind.summary}" for name, kind in KINDS.items())
                       + f" ({_default('model.kind')})")
    kinds.add_argument("--condition", choices=CONDITIONS,
                       help="cvae: what it is conditioned on, the class label or an observed half of the "
                       f"image; the other kinds keep label ({_default('model.condition')})")
    kinds.add_argument("--labelled-per-class", type=int, metavar="N",
                       help="m2, m1m2: labelled training images per class, the rest get the label -1 "
                       f"({_default('data.labelled_per_class')}: every label kept)")
    kinds.add_argument("--labelled-share", type=float, metavar="S",
                       help="m2, m1m2 with --labelled-per-class: the share of every batch that is labelled "
                       f"({_default('data.labelled_share')}: the natural proportion)")


def print_config(config) -> int:
    """Prints a run config as JSON (the --print-config of `vae train` and `vae tune`)."""
    print(config.to_json())
    return 0


# === train ===
def _add_train(subparsers) -> None:
    from pipelines.sources.cli import add_input_flags

    p = subparsers.add_parser(
        "train",
        help="train, evaluate, save and export a VAE in a workdir",
        description="Trains a VAE (model.kind vae, cvae, m2 or m1m2), evaluates it on the test split "
        "(negative ELBO, IWAE NLL), saves the model, its config, history.json, metrics.json and "
        "pictures in --workdir, and exports it as a new SavedModel version under WORKDIR/exports/. "
        "A tfds dataset is validated on data.validation_split, held out of its training split "
        f"(by default {DataConfig().validation_split}, training on {DataConfig().train_split}); "
        "the test split only scores the final model, and early stopping on a validation split "
        "that shares images with it is refused. Own data is split by seed (--validation-fraction, "
        "--test-fraction). Settings come from the defaults, then --config FILE, then the flags, then "
        "SECTION.FIELD=VALUE overrides (model.*, data.*, train.*; e.g. "
        "model.hidden_units=[512,256] model.kl_warmup_steps=1000). Run the same command again to "
        "resume a killed run.",
        epilog=EXAMPLES,
    )
    p.add_argument("--workdir", required=True, help="folder for the run's outputs")
    p.add_argument("--config", metavar="FILE",
                   help="a JSON run config, e.g. config.json of any run (default: the built-in defaults)")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective config (defaults, then --config, the flags, the overrides) "
                   "as JSON and exit, without training or reading data")
    p.add_argument("--overwrite", action="store_true",
                   help="train again in a workdir that holds a finished run")
    add_input_flags(p, required=False, training=True, default_note="; default --dataset "
                    + DataConfig().source.dataset, defaults=DataConfig(), section="data")
    p.add_argument("--download", action="store_true", default=None,
                   help="let tensorflow-datasets download the dataset, which needs network "
                   f"({_default('data.download')})")
    add_kind_flags(p)
    run = p.add_argument_group("model and training (each sets one config field)")
    run.add_argument("--epochs", type=int, help=f"passes over the training split ({_default('train.epochs')})")
    run.add_argument("--batch-size", type=int, help=f"global batch size ({_default('train.batch_size')})")
    run.add_argument("--learning-rate", type=float, help=f"Adam's learning rate ({_default('train.learning_rate')})")
    run.add_argument("--seed", type=int, help=f"seeds weights, noise and data order ({_default('train.seed')})")
    run.add_argument("--architecture", choices=ARCHITECTURES,
                     help=f"dense layers or strided convolutions ({_default('model.architecture')})")
    run.add_argument("--latent-dim", type=int, help=f"size of the latent vector z ({_default('model.latent_dim')})")
    run.add_argument("--likelihood", choices=LIKELIHOODS,
                     help=f"the decoder's distribution ({_default('model.likelihood')})")
    run.add_argument("--strategy", choices=STRATEGIES,
                     help="tf.distribute strategy (auto: multiworker with TF_CONFIG, mirrored with "
                     f"several GPUs or --cpu-replicas, else default) ({_default('train.strategy')})")
    run.add_argument("--cpu-replicas", type=int, metavar="N",
                     help=f"split the CPU into N logical devices, 0: no split ({_default('train.cpu_replicas')})")
    run.add_argument("--mixed-precision", action="store_true", default=None,
                     help="bfloat16 (CPU) or float16 (GPU) matrix products; losses stay float32 "
                     f"({_default('train.mixed_precision')})")
    run.add_argument("--iwae-k", type=int, metavar="K",
                     help="importance samples per test image of the IWAE estimate of -log p(x); null "
                     "takes the model's own: the largest of 1000, 500, 200, 100, ... whose work fits the "
                     "evaluation's budget (1000 for the MLP VAE and CVAE, 100 for the convolutional VAE "
                     "and the MLP M2, 10 for the convolutional M2), logged when the evaluation starts "
                     f"and saved in metrics.json ({_default('train.iwae_k')})")
    run.add_argument("--eval-examples", type=int, metavar="N",
                     help="test images to evaluate; null evaluates the whole test split "
                     f"({_default('train.eval_examples')})")
    for flag, field, kind in REMOVED_FLAGS:
        add_removed_flag(p, flag, field, type=kind, switch=kind is None)
    p.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE", help=OVERRIDES_HELP)
    p.set_defaults(func=run_train)


def flag_assignments(args, flags: dict[str, str]) -> list[str]:
    """The `section.field=value` assignments of the given flags, then those of removed flags."""
    given = [f"{field}={json.dumps(getattr(args, flag))}"
             for flag, field in flags.items() if getattr(args, flag) is not None]
    return given + list(getattr(args, "removed_flag_overrides", None) or [])


def train_config(args):
    """The run config of `vae train`: defaults, --config, flags, then overrides."""
    from core.config import ConfigError
    from pipelines.config import resolve_config
    from pipelines.sources.cli import data_overrides

    flags = flag_assignments(args, TRAIN_FLAGS)
    return resolve_config(args.config, data_overrides(args, ConfigError) + flags + list(args.overrides))


def run_train(args) -> int:
    if args.print_config:
        return print_config(train_config(args))
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
EXPORT_EXAMPLES = """\
Examples:
  vae export --workdir runs/fmnist --model-base-path exports/vae         # the next version
  vae export --workdir runs/fmnist --model-base-path exports/vae --version 7
  vae serve --model-base-path exports/vae                                # then serve it
"""


def signatures_text() -> str:
    """The signatures of every model kind, as the serving contract lists them."""
    from serving import contract as C

    lines, seen = [], set()
    for name, kind in KINDS.items():
        for condition in kind.conditions[:2] or ("label",):  # the label, then a half
            served = C.kind_of_features(*kind.serves(condition))
            if served in seen:
                continue
            seen.add(served)
            label = name + (f", condition {'label' if condition == 'label' else 'a half'}"
                            if len(kind.conditions) > 1 else "")
            sigs = " ".join(f"{s.name}({', '.join(t.key for t in s.inputs)})"
                            for s in C.signatures_for(served).values())
            lines.append(f"  {label} (served kind {served}): {sigs}; serving_default = "
                         f"{C.default_signature_for(served)}")
    return "\n".join(lines)


def _add_export(subparsers) -> None:
    from serving import contract as C

    p = subparsers.add_parser(
        "export",
        help="export a trained workdir as a versioned SavedModel",
        description="Writes MODEL_BASE_PATH/VERSION/ atomically: a SavedModel with the signatures "
        f"of the run's model kind, and {C.ASSETS_EXTRA}/ with the run config, metrics, the serving "
        "contract and TF Serving warm-up requests. MODEL_BASE_PATH is the folder `vae serve "
        "--model-base-path` and TF Serving's --model_base_path take (e.g. exports/vae). The "
        "signatures of each kind, with their inputs:\n" + signatures_text(),
        epilog=EXPORT_EXAMPLES,
    )
    p.add_argument("--workdir", required=True, help="a finished `vae train` workdir")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-base-path", metavar="DIR",
                       help="the model's export folder, which holds its version folders (e.g. "
                       "exports/vae); its last part is the model name recorded in the export")
    add_deprecated_flag(where, "--base-dir", "--model-base-path BASE_DIR/MODEL_NAME", metavar="ROOT")
    add_deprecated_flag(p, "--model-name", "--model-base-path BASE_DIR/MODEL_NAME", metavar="NAME")
    p.add_argument("--version", type=_positive, help="version number (default: the next one)")
    p.set_defaults(func=run_export)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def export_destination(args) -> tuple[str, str | None]:
    """(export root, model name) of `vae export`'s flags: --model-base-path ROOT/NAME, or
    the old --base-dir ROOT [--model-name NAME] (None: the run's train.model_name).

    Raises:
        UserError: --model-name with --model-base-path.
    """
    from core.errors import UserError

    if args.model_base_path is None:
        return args.base_dir, args.model_name
    if args.model_name is not None:
        raise UserError("--model-name goes with the old --base-dir; with --model-base-path the "
                        "model's name is the folder's last part")
    root, name = os.path.split(os.path.normpath(args.model_base_path))
    return root or ".", name


def run_export(args) -> int:
    from core.errors import UserError
    from pipelines.train import export_run

    root, name = export_destination(args)
    try:
        path = export_run(args.workdir, root, name, args.version)
    except FileExistsError as err:
        raise UserError(f"{err}; choose another --version, or leave it out for the next one") from None
    print(path)
    return 0
