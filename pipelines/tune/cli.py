"""`vae tune`: search model and optimiser settings with keras-tuner, export the best model.

`register(subparsers)` adds the subcommand to the `vae` console script (`pipelines.cli`).
Only this module parses flags; the work is `pipelines.tune.tune(config, workdir,
TuneSettings)`. Importing it loads neither TensorFlow nor keras-tuner.
"""

from __future__ import annotations

import argparse
import os

EXAMPLES = """\
examples:
  vae tune --workdir runs/tune                                  # Hyperband, default space
  vae tune --workdir runs/tune --tuner bayesian --max-trials 30 --max-epochs 5
  vae tune --workdir runs/tune --space my_space.json --objective iwae_nll train.seed=3
  vae tune --workdir runs/tune --overwrite                      # start the search anew
  vae tune --workdir runs/tune-photos --images photos/ --image-size 64x64 --max-trials 10

Run the same command again to resume an interrupted search. Distributed: the same
command on every host, with KERASTUNER_TUNER_ID=chief (the oracle) or tuner0, tuner1, ...
(workers), and KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT naming the chief.
"""

# Validation split held out of the training split, so the search never sees the test
# split (applied before --config and the overrides; a --config file replaces them).
HELD_OUT = ['data.train_split="train[:90%]"', 'data.validation_split="train[90%:]"']


def register(subparsers) -> None:
    """Adds `tune` to an argparse subparsers object; its func returns an exit code."""
    from pipelines.sources.cli import add_input_flags
    from pipelines.tune.names import OBJECTIVES, TUNERS

    p = subparsers.add_parser(
        "tune",
        help="search hyperparameters with keras-tuner and export the best model",
        description="Searches model and optimiser settings (a JSON search-space file) with\n"
        "keras-tuner, training every trial like `vae train`; writes the ranked trials\n"
        "(trials.csv, trials.json, objective.png), best_config.json, the best model in\n"
        "best/, and exports it as a new version under WORKDIR/exports/<model_name>/.\n"
        "The base config comes from the defaults (validating on the last 10% of the\n"
        "training split; own data: on a held-out share drawn by seed, and the test images\n"
        "are never seen by the search), then --config FILE, the input flags, then\n"
        "SECTION.FIELD=VALUE overrides.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", required=True, help="folder of the search (resumable)")
    p.add_argument("--space", help="search-space JSON file (default: the package's default_space.json)")
    p.add_argument("--tuner", choices=TUNERS, default="hyperband")
    p.add_argument("--max-trials", type=int,
                   help="stop after N trials (default: one Hyperband iteration; 20 for the others)")
    p.add_argument("--max-epochs", type=int, default=9,
                   help="epochs per trial; Hyperband's largest budget (default 9)")
    p.add_argument("--objective", choices=OBJECTIVES, default="val_loss",
                   help="val_loss: validation negative ELBO; iwae_nll: IWAE -log p(x) on the "
                   "validation images (lower is better)")
    p.add_argument("--hyperband-factor", type=int, default=3, help="Hyperband's reduction factor")
    p.add_argument("--iwae-k", type=int, default=100, help="importance samples of --objective iwae_nll")
    p.add_argument("--retrain", action="store_true",
                   help="retrain the best configuration from scratch instead of taking its trial's model")
    p.add_argument("--config", help="a JSON run config (e.g. config.json of a `vae train` run)")
    add_input_flags(p, required=False, training=True, default_note="; default --dataset fashion_mnist")
    p.add_argument("--overwrite", action="store_true",
                   help="discard the search in --workdir and start anew (exports/ is kept)")
    p.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE")
    p.set_defaults(func=run_tune)


def tune_settings(args):
    """The TuneSettings of parsed `vae tune` arguments."""
    from pipelines.tune import TuneSettings

    return TuneSettings(space=args.space, tuner=args.tuner, objective=args.objective,
                        max_trials=args.max_trials, max_epochs=args.max_epochs,
                        hyperband_factor=args.hyperband_factor, iwae_k=args.iwae_k,
                        retrain=args.retrain)


def tune_config(args):
    """The base RunConfig of every trial: defaults (held-out validation), --config, overrides."""
    from core.config import ConfigError
    from pipelines.config import resolve_config
    from pipelines.sources.cli import data_overrides, input_kind

    if args.split:
        raise ConfigError("--split: vae tune validates on the last 10% of the training split; set "
                          "data.train_split=... data.validation_split=... overrides instead")
    own = input_kind(args)[0] not in (None, "tfds")  # own data: validation and test drawn by seed
    assignments = [] if args.config or own else list(HELD_OUT)
    return resolve_config(args.config, assignments + data_overrides(args, ConfigError) + list(args.overrides))


def run_tune(args) -> int:
    """Runs `vae tune`; prints where the outputs are. Bad input raises a UserError (exit 2);
    a search in which no trial finished raises TuneError (exit 1)."""
    from pipelines.tune import tune

    settings, config = tune_settings(args), tune_config(args)
    result = tune(config, args.workdir, settings, overwrite=args.overwrite)
    if not result:
        print("worker finished; the chief writes the report and exports the best model")
        return 0
    print(f"best trial {result['best_trial']} of {result['trials']}: {result['objective']} "
          f"{result['best_value']:.2f} nats; test negative ELBO {result['test_nelbo']:.2f}, "
          f"IWAE NLL {result['test_iwae_nll']:.2f} nats ({result['model_from']})")
    workdir = os.path.abspath(args.workdir)
    print(f"outputs in {workdir}: trials.csv, trials.json, objective.png, best_config.json, best/")
    print(f"exported to {result['export']}")
    return 0
