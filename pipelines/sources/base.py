"""The inputs of encoding and training: the `Source` base and its shared helpers, a folder
of images and .npy arrays here; a tfds split in `datasets`, TFRecord files in `tfrecords`;
`open.open_source` opens the one a `SourceSpec` names.

Each source lists its inputs in a fixed order when opened, so input number `i` is the
same input on every run (that is what makes encode shards resumable and training splits
reproducible), and reads any range of positions as batches of float32 images in [0, 1]
of the wanted shape. Labels come from the source where it has them (class subfolders of
an image folder, a TFRecord label feature, a tfds `label`) or from a labels .npy.
Sources hold only plain data, so a Beam runner can pickle them to its workers; readers
open lazily.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from core.files import is_remote
from pipelines.sources import images as I
from pipelines.sources.spec import SourceError, SourceSpec


@dataclasses.dataclass
class Batch:
    """Consecutive positions of a source: the encodable rows and the bad inputs left out."""

    indices: list[int]
    ids: list[str]
    labels: list[int | None]
    images: np.ndarray  # (B, H, W, C) float32 in [0, 1]
    bad: list[dict]  # {"index", "id", "reason"}

    def split(self, position: int) -> tuple[Batch, Batch]:
        """(the part before input `position`, the part from it on)."""
        cut = int(np.searchsorted(self.indices, position))
        before = [b for b in self.bad if b["index"] < position]
        after = [b for b in self.bad if b["index"] >= position]
        return (Batch(self.indices[:cut], self.ids[:cut], self.labels[:cut], self.images[:cut], before),
                Batch(self.indices[cut:], self.ids[cut:], self.labels[cut:], self.images[cut:], after))


def _empty_batch(image_shape) -> Batch:
    return Batch([], [], [], np.zeros((0, *image_shape), np.float32), [])


def assemble(items, image_shape) -> Batch:
    """[(index, id, label, image or BadInput)] -> Batch."""
    batch = _empty_batch(image_shape)
    good = []
    for index, key, label, image in items:
        if isinstance(image, BaseException):
            batch.bad.append({"index": index, "id": key, "reason": str(image)})
        else:
            batch.indices.append(index)
            batch.ids.append(key)
            batch.labels.append(label)
            good.append(image)
    if good:
        batch.images = np.stack(good)
    return batch


def array_batch(indices, ids, labels, raw: np.ndarray, image_shape, resize) -> Batch:
    """A block of same-shape raw pixels -> Batch, NaN/out-of-range rows left out."""
    pixels = I.to_unit_float(raw if raw.ndim == 4 else raw[..., None])
    bad = {} if raw.dtype == np.uint8 else I.bad_rows(pixels, I.scale_of(raw.dtype))
    if not bad:  # the usual case: no per-row work
        return Batch(indices=indices, ids=ids, labels=labels, bad=[],
                     images=I.conform_batch(pixels, image_shape, resize))
    keep = [i for i in range(len(ids)) if i not in bad]
    return Batch(
        indices=[indices[i] for i in keep],
        ids=[ids[i] for i in keep],
        labels=[labels[i] for i in keep],
        images=I.conform_batch(pixels[keep] if bad else pixels, image_shape, resize),
        bad=[{"index": indices[i], "id": ids[i], "reason": r} for i, r in sorted(bad.items())],
    )


def expand_paths(patterns, what: str) -> list[str]:
    """Files named or matched by glob patterns, each pattern's matches sorted, no repeats."""
    files: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = sorted(tf.io.gfile.glob(pattern))
            if not matches:
                raise SourceError(f"{what} pattern {pattern} matches no file")
        elif tf.io.gfile.exists(pattern) and not tf.io.gfile.isdir(pattern):
            matches = [pattern]
        else:
            raise SourceError(f"{what} file {pattern} does not exist")
        files += [m if is_remote(m) else os.path.abspath(m) for m in matches if m not in files]
    return files


def file_names(files: list[str]) -> list[str]:
    """Short, unique names for ids: paths relative to the files' common folder."""
    if len(files) == 1:
        return [os.path.basename(files[0])]
    common = os.path.commonpath([os.path.dirname(f) for f in files])
    return [os.path.relpath(f, common) for f in files]


def file_size(path: str) -> int:
    return tf.io.gfile.stat(path).length


class Source:
    """An ordered collection of inputs (see the module docstring)."""

    kind = ""
    has_labels = False
    _transient: tuple[str, ...] = ()

    def __init__(self, spec: SourceSpec, image_shape):
        self.spec = spec
        self.image_shape = tuple(image_shape)
        self.problems: list[dict] = []  # file-level bad inputs found when opening (with --skip-bad)
        self.class_names: list[str] | None = None  # the classes' names, where the source has them
        self.label_override: np.ndarray | None = None  # (N,) int64 from a labels .npy

    def input_files(self) -> list[str]:
        """The files the source reads (empty for a tfds split: its version names it)."""
        return []

    def first_shape(self) -> tuple[int, int, int] | None:
        """The (h, w, c) of the first input as stored, or None when it cannot be told."""
        return None

    def batches(self, start: int, stop: int, batch_size: int) -> Iterator[Batch]:
        """Positions [start, stop) in order, `batch_size` positions per Batch."""
        for batch in self._batches(start, stop, batch_size):
            if self.label_override is not None:
                batch.labels = [int(self.label_override[i]) for i in batch.indices]
            yield batch

    def __len__(self) -> int:
        raise NotImplementedError

    def describe(self) -> dict:
        """What the input is, for the manifest (and, less `location`, the job's identity)."""
        raise NotImplementedError

    def identity(self) -> dict:
        identity = {k: v for k, v in self.describe().items() if k != "location"}
        if self.spec.labels_file:
            identity["labels_file"] = self.spec.labels_file
        return identity

    def _batches(self, start: int, stop: int, batch_size: int) -> Iterator[Batch]:
        raise NotImplementedError

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._transient}


# === A folder of image files ===
class ImageFolderSource(Source):
    """PNG and JPEG files under a folder (recursively), in sorted order of their relative
    paths, which are their ids.

    Labels as `keras.utils.image_dataset_from_directory` infers them: when every image
    lies in a subfolder, each top-level subfolder is a class (named after it, numbered
    in sorted order); images directly in the folder mean no labels.
    """

    kind = "images"
    _transient = ("_pool",)

    def __init__(self, spec: SourceSpec, image_shape):
        super().__init__(spec, image_shape)
        root = spec.paths[0]
        self.root = root if is_remote(root) else os.path.abspath(root)
        if not tf.io.gfile.isdir(self.root):
            raise SourceError(f"--images {self.root} is not a folder")
        names = []
        for folder, _, files in tf.io.gfile.walk(self.root):
            rel = os.path.relpath(folder, self.root)
            names += [os.path.normpath(os.path.join(rel, f)).replace(os.sep, "/")
                      for f in files if f.lower().endswith(I.IMAGE_EXTENSIONS)]
        self.names = sorted(names)
        if not self.names:
            raise SourceError(f"--images {self.root} holds no {'/'.join(I.IMAGE_EXTENSIONS)} files")
        self.sizes = [file_size(os.path.join(self.root, n)) for n in self.names]
        listing = "".join(f"{n}\t{s}\n" for n, s in zip(self.names, self.sizes))
        self.fingerprint = hashlib.sha256(listing.encode()).hexdigest()
        self.labels: list[int | None] = [None] * len(self.names)
        if all("/" in n for n in self.names):
            classes = sorted({n.split("/", 1)[0] for n in self.names})
            index = {c: i for i, c in enumerate(classes)}
            self.class_names = classes
            self.labels = [index[n.split("/", 1)[0]] for n in self.names]
            self.has_labels = True

    def input_files(self) -> list[str]:
        return [os.path.join(self.root, n) for n in self.names]

    def first_shape(self):
        try:
            with tf.io.gfile.GFile(self.input_files()[0], "rb") as f:
                return tuple(I.decode_image(f.read()).shape)
        except I.BadInput as err:
            raise SourceError(f"bad input {self.names[0]}: {err}") from None

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> dict:
        described = {"kind": self.kind, "folder": self.root, "num_inputs": len(self.names),
                     "listing_sha256": self.fingerprint}
        if self.class_names is not None:
            described["class_names"] = self.class_names
        return described

    def _read(self, index: int):
        name = self.names[index]
        try:
            with tf.io.gfile.GFile(os.path.join(self.root, name), "rb") as f:
                data = f.read()
            image = I.conform(I.decode_image(data), self.image_shape, self.spec.resize)
        except I.BadInput as err:
            image = err
        except (OSError, tf.errors.OpError) as err:
            image = I.BadInput(f"cannot read the file: {err}")
        return index, name, self.labels[index], image

    def _batches(self, start, stop, batch_size):
        if getattr(self, "_pool", None) is None:  # Pillow decodes without holding the GIL
            self._pool = concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2))
        for first in range(start, stop, batch_size):
            items = list(self._pool.map(self._read, range(first, min(first + batch_size, stop))))
            yield assemble(items, self.image_shape)


# === .npy arrays ===
class NpySource(Source):
    """Images in .npy files of shape (N, H, W) or (N, H, W, C): uint8/integer 0..255 or
    float 0..1, read through a memory map. Ids are `<file>:<row>`. No labels."""

    kind = "npy"
    _transient = ("_arrays",)

    def __init__(self, spec: SourceSpec, image_shape):
        super().__init__(spec, image_shape)
        self.files = expand_paths(spec.paths, "--npy")
        self.names = file_names(self.files)
        self.shapes, self.dtypes = [], []
        for path in self.files:
            array = self._open(path)
            shape = array.shape[1:] + ((1,) if array.ndim == 3 else ())
            if array.ndim not in (3, 4) or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
                raise SourceError(f"{path} holds a {array.dtype} array of shape {array.shape}; "
                                  f"expected images (N, H, W) or (N, H, W, C) of numbers")
            if shape != self.image_shape and not spec.resize:
                raise SourceError(f"{path} holds {I.shape_text(shape)} images, the model expects "
                                  f"{I.shape_text(self.image_shape)}; pass --resize")
            self.shapes.append(list(array.shape))
            self.dtypes.append(str(array.dtype))
        self.offsets = np.cumsum([0] + [s[0] for s in self.shapes]).tolist()

    @staticmethod
    def _open(path: str) -> np.ndarray:
        try:
            if not is_remote(path):
                return np.load(path, mmap_mode="r", allow_pickle=False)
            with tf.io.gfile.GFile(path, "rb") as f:
                return np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise SourceError(f"cannot read {path} as a .npy array: {err}") from None

    def __len__(self) -> int:
        return self.offsets[-1]

    def input_files(self) -> list[str]:
        return list(self.files)

    def first_shape(self):
        shape = tuple(self.shapes[0][1:])
        return shape + (1,) if len(shape) == 2 else shape

    def describe(self) -> dict:
        files = [{"path": p, "shape": s, "dtype": d, "bytes": file_size(p)}
                 for p, s, d in zip(self.files, self.shapes, self.dtypes)]
        return {"kind": self.kind, "files": files, "num_inputs": len(self)}

    def _batches(self, start, stop, batch_size):
        if getattr(self, "_arrays", None) is None:
            self._arrays = [self._open(p) for p in self.files]
        for first in range(start, stop, batch_size):
            last = min(first + batch_size, stop)
            while first < last:  # a batch may span two files: one block per file
                f = int(np.searchsorted(self.offsets, first, side="right")) - 1
                end = min(last, self.offsets[f + 1])
                rows = range(first - self.offsets[f], end - self.offsets[f])
                raw = np.asarray(self._arrays[f][rows.start:rows.stop])
                ids = [f"{self.names[f]}:{r}" for r in rows]
                yield array_batch(list(range(first, end)), ids, [None] * len(ids), raw,
                                   self.image_shape, self.spec.resize)
                first = end
