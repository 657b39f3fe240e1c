"""`vae tune`: search model and optimiser settings with keras-tuner, export the best model.

`register(subparsers)` adds the subcommand to the `vae` console script (`pipelines.cli`).
Only this module parses flags; the work is `pipelines.tune.tune(config, workdir,
TuneSettings)`. Importing it loads neither TensorFlow nor keras-tuner.
"""

from __future__ import annotations

import os

EXAMPLES = """\
Examples:
  vae tune --workdir runs/tune                                  # Hyperband, default space
  vae tune --workdir runs/tune --tuner bayesian --max-trials 30 --max-epochs 5
  vae tune --workdir runs/tune --space my_space.json --objective iwae_nll train.seed=3
  vae tune --workdir runs/tune-cvae --kind cvae                 # search a conditional VAE
  vae tune --workdir runs/tune --overwrite                      # start the search anew
  vae tune --workdir runs/tune-photos --images photos/ --image-size 64x64 --max-trials 10
  vae tune --workdir runs/tune --kind m2 --labelled-per-class 100 --print-config

Run the same command again to resume an interrupted search. Distributed: the same
command on every host, with KERASTUNER_TUNER_ID=chief (the oracle) or tuner0, tuner1, ...
(workers), and KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT naming the chief.
"""


def register(subparsers) -> None:
    """Adds `tune` to an argparse subparsers object; its func returns an exit code."""
    from pipelines.config import DataConfig
    from pipelines.sources.cli import add_input_flags
    from pipelines.train.cli import OVERRIDES_HELP, add_kind_flags
    from pipelines.tune.names import OBJECTIVES, TUNERS
    from pipelines.tune.settings import DEFAULT_MAX_TRIALS, TuneSettings

    data, defaults = DataConfig(), TuneSettings()
    p = subparsers.add_parser(
        "tune",
        help="search hyperparameters with keras-tuner and export the best model",
        description="Searches model and optimiser settings (a JSON search-space file) with "
        "keras-tuner, training every trial like `vae train` (model.kind vae, cvae or m2; not m1m2); writes "
        "the ranked trials (trials.csv, trials.json, objective.png), best_config.json, the best "
        "model in best/, and exports it as a new version under WORKDIR/exports/<model_name>/. "
        "Trials are compared on validation images the search never trains on: a tfds dataset's "
        f"data.validation_split (by default {data.validation_split}, held out of "
        f"data.train_split={data.train_split}); own data: a held-out share drawn by seed. The "
        "test images are never seen by the search; a validation split that shares images with "
        "the test split is refused. The base config comes from the defaults, then --config FILE, "
        "the flags, then SECTION.FIELD=VALUE overrides.",
        epilog=EXAMPLES,
    )
    p.add_argument("--workdir", required=True, help="folder of the search (resumable)")
    p.add_argument("--config", metavar="FILE",
                   help="a JSON run config, e.g. config.json of a `vae train` run (default: the built-in defaults)")
    p.add_argument("--print-config", action="store_true",
                   help="print the base run config of every trial (defaults, then --config, the flags, "
                   "the overrides) as JSON and exit, without searching or reading data")
    p.add_argument("--overwrite", action="store_true",
                   help="discard the search in --workdir and start anew (exports/ is kept)")
    search = p.add_argument_group("search")
    search.add_argument("--space", metavar="FILE",
                        help="search-space JSON file (default: the package's default_space.json)")
    search.add_argument("--tuner", choices=TUNERS, default=defaults.tuner,
                        help="Hyperband, Gaussian-process Bayesian optimisation or random search")
    search.add_argument("--max-trials", type=int, metavar="N",
                        help=f"stop after N trials (default: one Hyperband iteration; {DEFAULT_MAX_TRIALS} "
                        "for the others)")
    search.add_argument("--max-epochs", type=int, default=defaults.max_epochs, metavar="N",
                        help="epochs per trial; Hyperband's largest budget")
    search.add_argument("--objective", choices=OBJECTIVES, default=defaults.objective,
                        help="val_loss: validation negative ELBO; iwae_nll: IWAE -log p(x) on the "
                        "validation images (lower is better)")
    search.add_argument("--hyperband-factor", type=int, default=defaults.hyperband_factor, metavar="N",
                        help="Hyperband's reduction factor")
    search.add_argument("--iwae-k", type=int, default=defaults.iwae_k, metavar="K",
                        help="importance samples of --objective iwae_nll")
    search.add_argument("--retrain", action="store_true",
                        help="retrain the best configuration from scratch instead of taking its trial's model")
    add_input_flags(p, required=False, training=True, default_note=f"; default --dataset {data.source.dataset}",
                    defaults=data, section="data")
    add_kind_flags(p)
    p.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE", help=OVERRIDES_HELP)
    p.set_defaults(func=run_tune)


def tune_settings(args):
    """The TuneSettings of parsed `vae tune` arguments."""
    from pipelines.tune.settings import TuneSettings

    return TuneSettings(space=args.space, tuner=args.tuner, objective=args.objective,
                        max_trials=args.max_trials, max_epochs=args.max_epochs,
                        hyperband_factor=args.hyperband_factor, iwae_k=args.iwae_k,
                        retrain=args.retrain)


def tune_config(args):
    """The base RunConfig of every trial: defaults (validation held out of the training
    split), --config, the flags, then overrides.

    Raises:
        ConfigError: --split, or a validation split that shares images with the test split.
    """
    from core.config import ConfigError
    from pipelines.config import resolve_config
    from pipelines.sources.cli import data_overrides
    from pipelines.train.cli import KIND_FLAGS, flag_assignments

    if args.split:
        raise ConfigError("--split: vae tune trains on data.train_split and validates on "
                          "data.validation_split; set them as overrides instead")
    config = resolve_config(args.config, data_overrides(args, ConfigError) + flag_assignments(args, KIND_FLAGS)
                            + list(args.overrides))
    config.check_validation_unseen("vae tune selects the best trial on it")
    return config


def run_tune(args) -> int:
    """Runs `vae tune`; prints where the outputs are. Bad input raises a UserError (exit 2);
    a search in which no trial finished raises TuneError (exit 1)."""
    if args.print_config:
        from pipelines.train.cli import print_config

        return print_config(tune_config(args))
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
