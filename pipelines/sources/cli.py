"""The input flags `vae encode`, `vae train` and `vae tune` share, defined once.

    --dataset NAME [--split S] [--data-dir DIR]        a tensorflow-datasets dataset
    --images DIR                                       PNG/JPEG files (class subfolders: labels)
    --npy FILE_OR_GLOB...                              .npy arrays (N, H, W[, C])
    --tfrecord FILE_OR_GLOB... [--image-feature F] [--label-feature F] [--id-feature F]
    --labels-file FILE.npy   --resize   --skip-bad    (--labels: the old spelling, warns)
    training only: --image-size HxW  --channels N  --validation-fraction F  --test-fraction F
                   --split-seed N

Importing this module loads no TensorFlow (`vae --help` stays fast).
"""

from __future__ import annotations

import argparse
import json

from pipelines.sources.spec import DATA_FIELDS

KIND_FLAGS = (("tfds", "dataset"), ("images", "images"), ("npy", "npy"), ("tfrecord", "tfrecord"))


def image_size(text: str) -> tuple[int, int]:
    """`64x48` -> (64, 48): height x width."""
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit() or int(height) < 1 or int(width) < 1:
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTH in pixels, e.g. 64x64, got {text!r}")
    return int(height), int(width)


def add_input_flags(parser: argparse.ArgumentParser, *, required: bool, training: bool,
                    default_note: str = "", defaults=None, section: str | None = None) -> None:
    """Adds the input flags to a subcommand's parser.

    Args:
        required: one of --dataset, --images, --npy, --tfrecord must be given (encode).
        training: add the flags that shape and split training data (--image-size, ...).
        default_note: what the input is when none is given, for the help text.
        defaults: the config whose defaults the help texts state (the flags default to
            None, so that a --config file's values stand unless a flag is given): a
            `DataConfig()` for training, the `SourceSpec` class for encoding.
        section: the config section of those fields ("data"), or None.
    """
    from core.cli import add_old_spelling, config_default

    def default(field: str) -> str:
        return config_default(defaults, field, section) if defaults is not None else ""

    title = "input (exactly one of --dataset, --images, --npy, --tfrecord)" if required else (
        f"input (one of --dataset, --images, --npy, --tfrecord{default_note})")
    given = parser.add_argument_group(title)
    kind = given.add_mutually_exclusive_group(required=required)
    kind.add_argument("--dataset", help="tensorflow-datasets image dataset, e.g. fashion_mnist"
                      + (f" ({default('dataset')}, when no input is given)" if defaults is not None and training else ""))
    kind.add_argument("--images", metavar="DIR",
                      help="folder of PNG/JPEG files (searched recursively); when every image is in a "
                      "subfolder, each subfolder is a class, named after it")
    kind.add_argument("--npy", nargs="+", metavar="FILE", help=".npy files or globs: (N,H,W[,C]), "
                      "uint8 0..255 or float 0..1")
    kind.add_argument("--tfrecord", nargs="+", metavar="FILE",
                      help="TFRecord files or globs of serialized tf.train.Example")
    if training:
        given.add_argument("--split", help="with --dataset: the tfds split to train on, e.g. train[:50%%] ("
                           f"{default('train_split')}); validation stays data.validation_split, so "
                           "choose a training split that leaves it out")
    else:
        given.add_argument("--split", help="with --dataset: the tfds split expression, e.g. test, "
                           "train[:10%%], train+test (no default: required with --dataset)")
    given.add_argument("--data-dir", help="tfds data directory (default: $TFDS_DATA_DIR, else "
                       "~/tensorflow_datasets)")
    given.add_argument("--image-feature", help=f"TFRecord image feature ({default('image_feature')})")
    given.add_argument("--label-feature",
                       help=f"TFRecord int64 label feature, '' for none ({default('label_feature')}; "
                       "used when present)")
    given.add_argument("--id-feature", help="TFRecord feature to use as the row id of vae encode's "
                       "output (default: the input's position)" + ("; training does not use it" if training else ""))
    labels = given.add_argument("--labels-file", metavar="FILE.npy",
                                help="with --images, --npy or --tfrecord: a .npy of one integer label "
                                "per input, in the order the inputs are listed (default: none; image "
                                "folders take labels from class subfolders, TFRecords from "
                                "--label-feature)")
    add_old_spelling(given, labels, "--labels")
    given.add_argument("--resize", action="store_true", default=None,
                       help="resize (bilinear) and convert channels of images of another shape "
                       "instead of rejecting them (default: off)")
    given.add_argument("--skip-bad", action="store_true", default=None,
                       help="skip bad inputs (undecodable, wrong shape, NaN) and list them instead of "
                       "stopping on the first (default: off)")
    if training:
        given.add_argument("--image-size", type=image_size, metavar="HxW",
                           help="train at this size: own images are resized to it (implies --resize; "
                           "default: the images' own size)")
        given.add_argument("--channels", type=int, choices=(1, 3, 4),
                           help="train on 1 (grey), 3 (RGB) or 4 (RGBA) channels (own data; implies "
                           "--resize; default: the first image's)")
        given.add_argument("--validation-fraction", type=float, metavar="F",
                           help="own data: the share of images held out for validation "
                           f"({default('validation_fraction')})")
        given.add_argument("--test-fraction", type=float, metavar="F",
                           help=f"own data: the share of images held out for the test ({default('test_fraction')})")
        given.add_argument("--split-seed", type=int, metavar="N",
                           help=f"own data: seeds the draw of the held-out splits ({default('split_seed')})")


def input_kind(args) -> tuple[str | None, tuple[str, ...]]:
    """(the kind of input the flags name or None, its paths)."""
    for kind, flag in KIND_FLAGS:
        value = getattr(args, flag, None)
        if value:
            return kind, (() if kind == "tfds" else tuple([value] if isinstance(value, str) else value))
    return None, ()


def check_input_flags(args, error: type[Exception]) -> None:
    """Raises `error` for flags that go with another kind of input than the one given."""
    kind, _ = input_kind(args)
    if args.split and kind != "tfds":
        raise error("--split goes with --dataset")
    tfrecord_only = [f for f, v in (("--image-feature", args.image_feature), ("--label-feature", args.label_feature),
                                    ("--id-feature", args.id_feature)) if v is not None]
    if tfrecord_only and kind != "tfrecord":
        raise error(f"{', '.join(tfrecord_only)} go with --tfrecord")
    if args.labels_file and kind in (None, "tfds"):
        raise error("--labels-file goes with --images, --npy or --tfrecord (a tfds dataset has its own labels)")


def source_fields(args, error: type[Exception]) -> dict[str, object]:
    """The `SourceSpec` fields the input flags set, only those given (`vae encode` builds its
    spec of them, `vae train` and `vae tune` their `data` overrides, `data_overrides`).

    Raises:
        error: flags that go with another kind of input (`check_input_flags`).
    """
    check_input_flags(args, error)
    kind, paths = input_kind(args)
    fields: dict[str, object] = {}
    if kind == "tfds":
        fields.update(kind=kind, dataset=args.dataset)
    elif kind is not None:
        fields.update(kind=kind, paths=paths)
    for field in ("split", "data_dir", "image_feature", "id_feature", "labels_file", "resize", "skip_bad"):
        if getattr(args, field, None) is not None:  # flags named as their fields
            fields[field] = getattr(args, field)
    if args.label_feature is not None:
        fields["label_feature"] = args.label_feature or None
    return fields


def data_overrides(args, error: type[Exception]) -> list[str]:
    """The `data.FIELD=VALUE` assignments of the input flags of `vae train` / `vae tune`
    (applied after --config, before the user's own overrides): the source's fields as the
    `data` section spells them (`DATA_FIELDS`), --split as `data.train_split`, and the
    flags that shape and split training data."""
    source = source_fields(args, error)
    fields = {flat: source[spec] for flat, spec in DATA_FIELDS.items() if spec in source}
    if source.get("split"):
        fields["train_split"] = source["split"]
    for field in ("channels", "validation_fraction", "test_fraction", "split_seed"):
        if getattr(args, field, None) is not None:
            fields[field] = getattr(args, field)
    if getattr(args, "image_size", None) is not None:
        fields["image_size"] = args.image_size
    return [f"data.{field}={json.dumps(value)}" for field, value in fields.items()]
