"""The user's own images as a training run's data (`pipelines.data.TrainingData`): a folder
of images, .npy or TFRecord files (`pipelines.sources`, the layer `vae encode` reads them
with), split, labelled, fingerprinted and fed as tf.data pipelines.

Opening reads every input once: that checks each one (an undecodable or wrongly shaped
input stops the run naming it, or with `data.skip_bad` is skipped and listed), hashes
the files' contents and, for a source that fits `data.in_memory_max_mb`, keeps the
images as one uint8 array (the fast path of `pipelines.batches.in_memory_batches`). A
larger source streams from its files on every epoch through a shuffle buffer.

Own data has no splits: the validation and test images are drawn by `data.split_seed`
(fractions `data.validation_fraction`, `data.test_fraction`) over the inputs in the
source's fixed order, so the same files give the same splits on every run; the record
(`record()`, the workdir's `source.json`) lists them, with every file's size and hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math

import numpy as np
import tensorflow as tf

from pipelines import batches, data
from pipelines.config import DataConfig
from pipelines.data import SPLITS
from pipelines.sources import SourceError, open_source
from pipelines.sources.base import Source
from pipelines.sources.images import shape_text

log = logging.getLogger(__name__)

READ_BATCH = 256  # inputs per read of the source


def draw_splits(count: int, validation_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Positions 0..count-1 split into train / validation / test by a seeded permutation:
    sorted int64 indices, at least one image in each held-out split.

    Raises:
        SourceError: too few inputs for three non-empty splits.
    """
    held = [max(1, round(count * f)) for f in (validation_fraction, test_fraction)]
    if count - sum(held) < 1:
        raise SourceError(f"{count} inputs are too few to hold out {held[0]} for validation and "
                          f"{held[1]} for test and train on the rest")
    order = np.random.default_rng(seed).permutation(count)
    parts = np.split(order, [held[0], sum(held)])
    return {"validation": np.sort(parts[0]), "test": np.sort(parts[1]), "train": np.sort(parts[2])}


def file_hashes(paths: list[str]) -> dict[str, dict]:
    """{path: {"bytes", "sha256"}} of the files' contents."""
    out = {}
    for path in paths:
        digest, size = hashlib.sha256(), 0
        with tf.io.gfile.GFile(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        out[path] = {"bytes": size, "sha256": digest.hexdigest()}
    return out


def fingerprint(files: dict[str, dict]) -> str:
    """One SHA-256 over every file's path, size and hash (the labels file's included)."""
    listing = "".join(f"{p}\t{v['bytes']}\t{v['sha256']}\n" for p, v in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def target_shape(source: Source, config: DataConfig) -> tuple[int, int, int]:
    """(H, W, C) of the model: `image_size` and `channels` where set, else the first input's."""
    first = source.first_shape()
    if first is None and (config.image_size is None or config.channels is None):
        raise SourceError(f"the size of the {config.source.kind} inputs cannot be told from the first one "
                          f"(raw pixels?); pass --image-size HxW and --channels")
    height, width = config.image_size or first[:2]
    channels = config.channels or first[2]
    if channels == 2:  # grey + alpha: keep the grey
        channels = 1
    return int(height), int(width), int(channels)


@dataclasses.dataclass
class OwnData:
    """Own data, opened and checked, as `pipelines.data.TrainingData`: its shape, labels,
    splits and record.

    Use `open_own_data(config, workers)`; then `train` and `evaluation` give the pipelines.
    """

    config: DataConfig
    source: Source
    image_shape: tuple[int, int, int]
    labels: np.ndarray  # (N,) int64, -1 where an input has no label
    good: np.ndarray  # (N,) bool: False for a skipped bad input
    splits: dict[str, np.ndarray]  # split -> positions, bad inputs left out
    skipped: list[dict]
    files: dict[str, dict]
    images: np.ndarray | None  # (N, H, W, C) uint8 when held in memory

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    def num_classes(self) -> int:
        """The classes: as many as the names, else the largest label + 1.

        Raises:
            DataError: the inputs carry no labels (a conditional or M2 model needs them).
        """
        if self.source.class_names:
            return len(self.source.class_names)
        if not self.has_labels:
            raise data.DataError(
                f"the {self.config.source.kind} inputs carry no labels, and a label-conditioned or "
                f"semi-supervised model needs them: put the images of each class in a subfolder "
                f"of --images, name a TFRecord --label-feature, or pass --labels FILE.npy")
        return int(self.labels.max()) + 1

    def class_names(self) -> list[str] | None:
        return list(self.source.class_names) if self.source.class_names else None

    def count(self, split: str) -> int:
        return len(self.splits[split])

    def split_name(self, split: str) -> str:
        return split

    def split_labels(self, split: str = "train") -> np.ndarray:
        """The labels of a split's images in its order (the indices of `labelled`).

        Raises:
            DataError: the inputs carry no labels (`num_classes`).
        """
        self.num_classes()
        return self.labels[self.splits[split]]

    def fingerprint(self) -> str:
        return fingerprint(self.files)

    def resolved(self, config: DataConfig) -> DataConfig:
        """`config` with the class names a run records (the export carries them) and the
        hash of the files (a resume with changed files is refused)."""
        names = self.class_names()
        return dataclasses.replace(config, class_names=tuple(names) if names else None,
                                   fingerprint=self.fingerprint())

    def record(self) -> dict:
        """What the workdir's `source.json` holds: the source, every file with its size and
        hash, the classes, the skipped inputs and the positions of each split."""
        return {
            "source": self.source.describe(),
            "labels_file": self.config.source.labels_file,
            "image_shape": list(self.image_shape),
            "num_inputs": len(self.source),
            "class_names": self.class_names(),
            "fingerprint": self.fingerprint(),
            "files": self.files,
            "skipped": self.skipped,
            "splits": {"split_seed": self.config.split_seed,
                       "validation_fraction": self.config.validation_fraction,
                       "test_fraction": self.config.test_fraction,
                       **{name: [int(i) for i in self.splits[name]] for name in SPLITS}},
            "in_memory": self.images is not None,
        }

    # === Pipelines ===
    def _examples(self, positions: np.ndarray, labels: np.ndarray) -> tf.data.Dataset:
        """(image, label) of `positions` (sorted), read from the files in order."""
        wanted = dict(zip(positions.tolist(), labels.tolist()))
        source, shape, first, stop = self.source, self.image_shape, int(positions[0]), int(positions[-1]) + 1

        def generate():
            for batch in source.batches(first, stop, READ_BATCH):
                for row, index in enumerate(batch.indices):
                    if index in wanted:
                        yield batch.images[row], np.int64(wanted[index])

        return tf.data.Dataset.from_generator(generate, output_signature=(
            tf.TensorSpec(shape, tf.float32), tf.TensorSpec((), tf.int64)))

    def train(self, batch_size: int, *, binarize: bool, seed: int, labelled: np.ndarray | None = None,
              labelled_per_batch: int | None = None, start: int = 0) -> tf.data.Dataset:
        """Repeated shuffled batches of the training split; `labelled` (a mask over the
        split's images) leaves the label of the others -1; `labelled_per_batch` puts that
        many labelled images in every batch (`batches.in_memory_batches`, `batches.shuffled_batches`)."""
        positions = self.splits["train"]
        labels = self.labels[positions]
        if labelled is not None:
            labels = np.where(labelled, labels, -1)
        if len(positions) < batch_size:
            raise data.DataError(f"the training split holds {len(positions)} images, fewer than one "
                                 f"batch of {batch_size}; lower --batch-size")
        if self.images is not None:
            return batches.in_memory_batches(self.images[positions], labels, batch_size, binarize=binarize,
                                          seed=seed, labelled_per_batch=labelled_per_batch, start=start)
        return batches.shuffled_batches(self._examples(positions, labels), batch_size, binarize=binarize,
                                     seed=seed, repeat=True, shuffle_buffer=min(self.config.shuffle_buffer, len(positions)),
                                     labelled_per_batch=labelled_per_batch, start=start)

    def evaluation(self, split: str, batch_size: int, *, binarize: bool, seed: int,
                   limit: int | None = None) -> tf.data.Dataset:
        """A split's batches in a fixed order, binarised once (as `data.evaluation_dataset`)."""
        positions = self.splits[split][:limit]
        labels = self.labels[positions]
        if self.images is not None:
            ds = tf.data.Dataset.from_tensor_slices((self.images[positions], labels))
        else:
            ds = self._examples(positions, labels)
        return batches.fixed_batches(ds, batch_size, binarize=binarize, seed=seed, cache=self.config.cache)


def open_own_data(config: DataConfig, workers: int = 1) -> OwnData:
    """Opens, checks and splits own data (see the module docstring).

    Raises:
        SourceError: the input cannot be read, a bad input without `skip_bad` (named),
            a labels file that does not fit, too few inputs to split.
    """
    spec = config.source_spec()
    probe = open_source(dataclasses.replace(spec, resize=True), (1, 1, 1))
    shape = target_shape(probe, config)
    source = open_source(spec, shape) if spec.kind == "npy" else probe  # .npy checks shapes on opening
    source.image_shape, source.spec = shape, spec
    if hasattr(source, "pixels"):  # TFRecord raw pixels are read at this shape
        source.pixels = math.prod(shape)
    count = len(source)
    if count == 0:
        raise SourceError(f"the {spec.kind} input {', '.join(spec.paths)} holds no images")
    in_memory = workers == 1 and count * math.prod(shape) / 2**20 <= config.in_memory_max_mb
    images = np.zeros((count, *shape), np.uint8) if in_memory else None
    labels = np.full(count, -1, np.int64)
    good = np.ones(count, bool)
    skipped = list(source.problems)
    for batch in source.batches(0, count, READ_BATCH):
        for bad in batch.bad:
            if not spec.skip_bad:
                raise SourceError(f"bad input {bad['id']}: {bad['reason']} (pass --skip-bad to train "
                                  f"without it; it is then listed in the workdir's source.json)")
            good[bad["index"]] = False
            skipped.append(bad)
        if batch.indices:
            index = np.asarray(batch.indices)
            labels[index] = [-1 if label is None else label for label in batch.labels]
            if images is not None:
                images[index] = np.round(batch.images * 255.0).astype(np.uint8)
    for bad in skipped:
        log.warning("skipped bad input %s: %s", bad["id"], bad["reason"])
    splits = draw_splits(count, config.validation_fraction, config.test_fraction, config.split_seed)
    splits = {name: positions[good[positions]] for name, positions in splits.items()}
    for name, positions in splits.items():
        if not len(positions):
            raise SourceError(f"the {name} split is empty once the bad inputs are skipped")
    files = file_hashes(source.input_files() + ([spec.labels_file] if spec.labels_file else []))
    own = OwnData(config, source, shape, labels, good, splits, skipped, files, images)
    log.info("%s: %d inputs of %s (%d skipped), %d train / %d validation / %d test, %s%s",
             config.name, count, shape_text(shape), len(skipped), *(own.count(s) for s in SPLITS),
             "held in memory" if in_memory else "streamed from the files",
             f", classes {own.class_names()}" if own.class_names() else "")
    return own

