"""`vae encode`: encode a dataset, a folder of images, .npy or TFRecord files with an export.

`register(subparsers)` adds the subcommand to the `vae` console script (`pipelines.cli`).
Only this module parses flags; the work is `pipelines.encode.encode(EncodeConfig)`.
Importing it loads neither TensorFlow nor `model/` (the encoder works from the export).
"""

from __future__ import annotations

import os

EXAMPLES = """\
Examples:
  vae encode --model-base-path exports/vae --dataset fashion_mnist --split test --output-dir codes/fmnist-test
  vae encode --model-base-path exports/vae/3 --images photos/ --resize --skip-bad --output-dir codes/photos
  vae encode --model-base-path exports/vae --npy batch.npy --reconstruction-error --output-dir codes/batch
  vae encode --model-base-path exports/vae --npy batch.npy --labels-file batch_labels.npy \\
      --output-dir codes/labelled
  vae encode --model-base-path exports/vae --tfrecord 'data/*.tfrecord' --image-feature image/encoded \\
      --format tfrecord --output-dir codes/records
  vae encode --model-base-path gs://bucket/exports/vae --dataset fashion_mnist --split train \\
      --output-dir gs://bucket/codes/train --runner beam -- --runner=DataflowRunner \\
      --project=my-project --region=europe-west1 --temp_location=gs://bucket/tmp
"""


def register(subparsers) -> None:
    """Adds `encode` to an argparse subparsers object; its func returns an exit code."""
    from core.cli import add_old_spelling
    from pipelines.encode.config import DEFAULT_ROWS_PER_SHARD
    from pipelines.sources.cli import add_input_flags
    from pipelines.sources.spec import SourceSpec
    from serving.contract import MAX_BATCH

    p = subparsers.add_parser(
        "encode",
        help="batch-encode images to latent codes with an exported model (Parquet/TFRecord shards)",
        description="Encodes every input image with the export's `encode` signature and writes one "
        "row per input (id, label, z_mean, z_log_var, ...) to sharded Parquet or TFRecord files and "
        "_manifest.json in --output-dir (the folder reads as one Parquet dataset). Killed runs resume where they stopped when the same command runs "
        "again. Model kinds: a vae, a cvae conditioned on a half, and an m2 (whose rows add the "
        "class probabilities and predicted_label); a cvae conditioned on labels is refused, since "
        "its encode signature takes the labels too.",
        epilog=EXAMPLES,
    )
    model = p.add_argument("--model-base-path", required=True, metavar="DIR",
                           help="the model's export folder, as `vae serve` takes it (e.g. exports/vae: its "
                           "newest version folder is used), or one version folder (e.g. exports/vae/3)")
    add_old_spelling(p, model, "--model")
    out = p.add_argument("--output-dir", required=True, metavar="DIR",
                         help="output folder of the shards and _manifest.json (local or gs://...)")
    add_old_spelling(p, out, "--out")

    add_input_flags(p, required=True, training=False, defaults=SourceSpec)

    written = p.add_argument_group("output")
    written.add_argument("--format", choices=["parquet", "tfrecord"], default="parquet",
                         help="file format of the shards")
    written.add_argument("--log-likelihood", action="store_true",
                         help="add log_likelihood (IWAE estimate of log p(x), nats; slow)")
    written.add_argument("--reconstruction-error", action="store_true",
                         help="add reconstruction_error (mean squared error of `reconstruct`)")
    written.add_argument("--rows-per-shard", type=int, default=DEFAULT_ROWS_PER_SHARD,
                         help="inputs per shard file (the unit a killed run resumes from)")
    written.add_argument("--overwrite", action="store_true",
                         help="replace a finished output, or a partial one of other arguments")

    run = p.add_argument_group("running")
    run.add_argument("--batch-size", type=int, default=MAX_BATCH, help=f"images per signature call (at most {MAX_BATCH})")
    run.add_argument("--runner", choices=["local", "beam"], default="local",
                     help="local: one resumable process; beam: an Apache Beam pipeline")
    run.add_argument("--beam-option", action="append", default=[], metavar="KEY=VALUE",
                     help="a Beam pipeline option, e.g. direct_num_workers=2 (repeatable; default: none)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("beam_args", nargs="*", metavar="-- BEAM_FLAG",
                   help="after --: Beam flags as Beam spells them, e.g. --runner=FlinkRunner (default: none)")
    p.set_defaults(func=run_encode)


def config_from_args(args):
    """The EncodeConfig of parsed `vae encode` arguments."""
    from pipelines.encode import EncodeConfig, EncodeError
    from pipelines.sources.cli import source_fields
    from pipelines.sources.spec import SourceSpec

    beam_args = [f"--{o}" if not o.startswith("--") else o for o in args.beam_option] + list(args.beam_args)
    if any("=" not in o for o in args.beam_option):
        raise EncodeError("--beam-option takes KEY=VALUE, e.g. --beam-option direct_num_workers=2")
    if beam_args and args.runner != "beam":
        raise EncodeError(f"Beam flags {beam_args} need --runner beam")
    if any(not a.startswith("-") for a in args.beam_args):
        raise EncodeError(f"unexpected arguments {args.beam_args}: Beam flags go after -- and start with --")
    source = SourceSpec(**{"data_dir": os.environ.get("TFDS_DATA_DIR"), **source_fields(args, EncodeError)})
    return EncodeConfig(
        model=args.model_base_path, out=args.output_dir, source=source,
        output_format=args.format, log_likelihood=args.log_likelihood,
        reconstruction_error=args.reconstruction_error,
        overwrite=args.overwrite, rows_per_shard=args.rows_per_shard,
        batch_size=args.batch_size, runner=args.runner, beam_args=tuple(beam_args),
        progress=not args.no_progress,
    )


def run_encode(args) -> int:
    """Runs `vae encode` and prints a summary; bad input raises EncodeError (exit 2)."""
    from pipelines.encode import encode
    from pipelines.encode.output import MANIFEST_FILE

    manifest = encode(config_from_args(args))
    model = manifest["model"]
    print(f"encoded {manifest['rows']} of {manifest['num_inputs']} inputs ({manifest['num_skipped']} "
          f"skipped) with {model['name']} version {model['version']} in "
          f"{manifest['runner']['wall_seconds']:.1f} s: {len(manifest['shards'])} {manifest['format']} "
          f"shards and {MANIFEST_FILE} in {os.path.abspath(args.output_dir) if '://' not in args.output_dir else args.output_dir}")
    return 0
