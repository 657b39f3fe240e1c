"""The input flags `vae encode`, `vae train` and `vae tune` share, defined once.

    --dataset NAME [--split S] [--data-dir DIR]        a tensorflow-datasets dataset
    --images DIR                                       PNG/JPEG files (class subfolders: labels)
    --npy FILE_OR_GLOB...                              .npy arrays (N, H, W[, C])
    --tfrecord FILE_OR_GLOB... [--image-feature F] [--label-feature F] [--id-feature F]
    --labels FILE.npy   --resize   --skip-bad
    training only: --image-size HxW  --channels N  --validation-fraction F  --test-fraction F
                   --split-seed N

Importing this module loads no TensorFlow (`vae --help` stays fast).
"""

from __future__ import annotations

import argparse
import json

KIND_FLAGS = (("tfds", "dataset"), ("images", "images"), ("npy", "npy"), ("tfrecord", "tfrecord"))


def image_size(text: str) -> tuple[int, int]:
    """`64x48` -> (64, 48): height x width."""
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit() or int(height) < 1 or int(width) < 1:
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTH in pixels, e.g. 64x64, got {text!r}")
    return int(height), int(width)


def add_input_flags(parser: argparse.ArgumentParser, *, required: bool, training: bool,
                    default_note: str = "") -> None:
    """Adds the input flags to a subcommand's parser.

    Args:
        required: one of --dataset, --images, --npy, --tfrecord must be given (encode).
        training: add the flags that shape and split training data (--image-size, ...).
        default_note: what the input is when none is given, for the help text.
    """
    title = "input (exactly one of --dataset, --images, --npy, --tfrecord)" if required else (
        f"input (one of --dataset, --images, --npy, --tfrecord{default_note})")
    given = parser.add_argument_group(title)
    kind = given.add_mutually_exclusive_group(required=required)
    kind.add_argument("--dataset", help="tensorflow-datasets image dataset, e.g. fashion_mnist")
    kind.add_argument("--images", metavar="DIR",
                      help="folder of PNG/JPEG files (searched recursively); when every image is in a "
                      "subfolder, each subfolder is a class, named after it")
    kind.add_argument("--npy", nargs="+", metavar="FILE", help=".npy files or globs: (N,H,W[,C]), "
                      "uint8 0..255 or float 0..1")
    kind.add_argument("--tfrecord", nargs="+", metavar="FILE",
                      help="TFRecord files or globs of serialized tf.train.Example")
    given.add_argument("--split", help="tfds split expression, e.g. test, train[:10%%], train+test"
                       + (" (training: the training split)" if training else ""))
    given.add_argument("--data-dir", help="tfds data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    given.add_argument("--image-feature", help="TFRecord image feature (default image)")
    given.add_argument("--label-feature",
                       help="TFRecord int64 label feature, '' for none (default label, if present)")
    given.add_argument("--id-feature", help="TFRecord feature to use as the row id (encode)")
    given.add_argument("--labels", metavar="FILE.npy",
                       help="a .npy of one integer label per input, in the order the inputs are listed")
    given.add_argument("--resize", action="store_true", default=None,
                       help="resize (bilinear) and convert channels of images of another shape "
                       "instead of rejecting them")
    given.add_argument("--skip-bad", action="store_true", default=None,
                       help="skip bad inputs (undecodable, wrong shape, NaN) and list them instead of "
                       "stopping on the first")
    if training:
        given.add_argument("--image-size", type=image_size, metavar="HxW",
                           help="train at this size: own images are resized to it (implies --resize)")
        given.add_argument("--channels", type=int, choices=(1, 3, 4),
                           help="train on 1 (grey), 3 (RGB) or 4 (RGBA) channels (own data; implies "
                           "--resize; default: the first image's)")
        given.add_argument("--validation-fraction", type=float,
                           help="own data: the share of images held out for validation (default 0.1)")
        given.add_argument("--test-fraction", type=float,
                           help="own data: the share of images held out for the test (default 0.1)")
        given.add_argument("--split-seed", type=int, help="own data: seeds the draw of the held-out splits")


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
    if args.labels and kind in (None, "tfds"):
        raise error("--labels goes with --images, --npy or --tfrecord (a tfds dataset has its own labels)")


def data_overrides(args, error: type[Exception]) -> list[str]:
    """The `data.FIELD=VALUE` assignments of the input flags of `vae train` / `vae tune`
    (applied after --config, before the user's own overrides)."""
    check_input_flags(args, error)
    kind, paths = input_kind(args)
    fields: dict[str, object] = {}
    if kind == "tfds":
        fields.update(source="tfds", dataset=args.dataset)
        if args.split:
            fields["train_split"] = args.split
    elif kind is not None:
        fields.update(source=kind, paths=list(paths))
    if args.labels is not None:
        fields["labels_file"] = args.labels
    for field in ("data_dir", "image_feature", "resize", "skip_bad", "channels", "validation_fraction",
                  "test_fraction", "split_seed"):  # flags named as their fields
        if getattr(args, field, None) is not None:
            fields[field] = getattr(args, field)
    if args.label_feature is not None:
        fields["label_feature"] = args.label_feature or None
    if getattr(args, "image_size", None) is not None:
        fields["image_size"] = list(args.image_size)
    return [f"data.{field}={json.dumps(value)}" for field, value in fields.items()]
