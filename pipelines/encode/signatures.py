"""The exported model as the batch encoder sees it: a SavedModel and its signatures.

Nothing here imports `model/` or Keras: the export's own `encode`, `reconstruct` and
`log_likelihood` signatures, the ones the server calls, do the work (loaded alone by
`loading.load_signatures`, or with `tf.saved_model.load` for exports it does not read), so
an export written by any version of the training code can be encoded.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from core.files import is_remote, read_json
from pipelines.encode.config import EncodeError
from pipelines.encode.loading import load_signatures
from serving import contract as C, layout
from serving.description import ExportDescription
from serving.errors import ExportError
from serving.layout import join, list_versions

RECONSTRUCTION_ERROR = "reconstruction_error"  # an output column, not a signature key
PREDICTED_LABEL = "predicted_label"  # an output column of an M2 export: argmax of its classify


@dataclasses.dataclass(frozen=True)
class ExportInfo:
    """Where an export is and what it expects.

    Args:
        path: the version folder holding `saved_model.pb`.
        model_name: the served name (from the export's description, `serving_contract.json`,
            else the parent folder).
        version: the integer version folder name, or None for a folder named otherwise.
        image_shape: (H, W, C) of the `encode` signature's `images` input.
        latent_dim: D, the width of `z_mean` and `z_log_var`.
        num_classes: K of an export with a `classify` signature (M2), from its description,
            else None: such an export's rows also get the class probabilities and the
            predicted label.
    """

    path: str
    model_name: str
    version: int | None
    image_shape: tuple[int, int, int]
    latent_dim: int
    num_classes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        described = {"name": self.model_name, "version": self.version, "path": self.path,
                     "image_shape": list(self.image_shape), "latent_dim": self.latent_dim}
        if self.num_classes is not None:
            described["num_classes"] = self.num_classes
        return described


def _is_version_dir(path: str) -> bool:
    return tf.io.gfile.exists(join(path, C.SAVED_MODEL_FILE))


def resolve_version_dir(path: str) -> str:
    """The version folder of `path`: itself, or the highest integer sub-folder with a model.

    Raises:
        EncodeError: no SavedModel there.
    """
    if not is_remote(path):
        path = os.path.abspath(path)
    if not tf.io.gfile.isdir(path):
        raise EncodeError(f"--model-base-path {path} does not exist (expected an export folder)")
    if _is_version_dir(path):
        return path
    for version in reversed(list_versions(path)):
        if _is_version_dir(join(path, str(version))):
            return join(path, str(version))
    raise EncodeError(
        f"--model-base-path {path} holds no SavedModel: expected {C.SAVED_MODEL_FILE} in it, or in an "
        f"integer version folder under it (<base>/<model_name>/<version>/{C.SAVED_MODEL_FILE})"
    )


def _read_json(path: str) -> dict:
    return read_json(path, default={})


def _description(version_dir: str) -> ExportDescription | None:
    """The export's description (`serving_contract.json`), None if it has none."""
    try:
        return ExportDescription.read(version_dir)
    except ExportError as err:
        raise EncodeError(str(err)) from None


def read_meta_graph(version_dir: str) -> meta_graph_pb2.MetaGraphDef:
    """The export's serving MetaGraph as written in `saved_model.pb` (`serving.layout`)."""
    try:
        return layout.read_meta_graph(version_dir)
    except ExportError as err:
        raise EncodeError(str(err)) from None


def _dims(tensor_info) -> list[int | None] | None:
    shape = tensor_info.tensor_shape
    return None if shape.unknown_rank else [d.size if d.size >= 0 else None for d in shape.dim]


def needed_signatures(log_likelihood: bool = False, reconstruction_error: bool = False) -> list[str]:
    """The signatures an encode job with these extra columns calls."""
    return [C.ENCODE] + [C.LOG_LIKELIHOOD] * log_likelihood + [C.RECONSTRUCT] * reconstruction_error


def describe_export(path: str, needed: list[str] | tuple[str, ...] = (C.ENCODE,)) -> ExportInfo:
    """Reads name, version, image shape and latent size of the export at `path`, without
    loading it (from `saved_model.pb`'s signature definitions and `assets.extra`).

    The image shape comes from the `encode` signature's input; dimensions it leaves open
    are taken from `assets.extra/config.json` (`model.image_shape`).

    Raises:
        EncodeError: no export at `path`, or it lacks one of the `needed` signatures.
    """
    version_dir = resolve_version_dir(path)
    signatures = dict(read_meta_graph(version_dir).signature_def)
    missing = [name for name in needed if name not in signatures]
    if C.ENCODE in missing:
        raise EncodeError(f"the export at {version_dir} has no {C.ENCODE!r} signature "
                          f"(signatures: {sorted(signatures)})")
    if missing:
        raise EncodeError(f"the export at {version_dir} lacks the signature(s) {missing}")
    encode = signatures[C.ENCODE]
    if set(encode.inputs) - {C.IMAGES}:
        raise EncodeError(f"the {C.ENCODE!r} signature of the export at {version_dir} takes "
                          f"{sorted(encode.inputs)}, not images alone (a CVAE conditioned on labels); "
                          f"vae encode needs an export whose {C.ENCODE!r} takes only {C.IMAGES!r}")
    dims = _dims(encode.inputs[C.IMAGES]) if C.IMAGES in encode.inputs else None
    extra = join(version_dir, C.ASSETS_EXTRA)
    config_shape = (_read_json(join(extra, C.CONFIG_FILE)).get("model") or {}).get("image_shape")
    shape = dims[1:] if dims is not None else [None, None, None]
    if any(d is None for d in shape):
        if not config_shape:
            raise EncodeError(f"cannot tell the image shape of the export at {version_dir}: the "
                              f"{C.ENCODE!r} signature takes {dims} and "
                              f"{C.ASSETS_EXTRA}/{C.CONFIG_FILE} has no model.image_shape")
        shape = [d if d is not None else int(c) for d, c in zip(shape, config_shape)]
    latent = _dims(encode.outputs[C.Z_MEAN]) if C.Z_MEAN in encode.outputs else None
    if not latent or latent[-1] is None:
        raise EncodeError(f"the {C.ENCODE!r} signature of the export at {version_dir} does not "
                          f"give the width of {C.Z_MEAN!r}")
    description = _description(version_dir)
    num_classes = None
    if C.CLASSIFY in signatures:
        num_classes = description.num_classes if description is not None else None
        if num_classes is None:
            raise EncodeError(f"the export at {version_dir} has a {C.CLASSIFY!r} signature but its "
                              f"{C.ASSETS_EXTRA}/{C.CONTRACT_FILE} does not give its number of classes")
    folder = posixpath.basename(version_dir.rstrip("/"))
    parent = posixpath.basename(posixpath.dirname(version_dir.rstrip("/")))
    return ExportInfo(
        path=version_dir,
        model_name=description.model_name if description is not None else parent,
        version=int(folder) if folder.isdigit() else None,
        image_shape=tuple(int(d) for d in shape),
        latent_dim=int(latent[-1]),
        num_classes=num_classes,
    )


def output_keys(log_likelihood: bool, reconstruction_error: bool, classes: bool = False) -> list[str]:
    """The per-image outputs of an encode job, in column order (`classes`: an export with
    a `classify` signature, whose rows get `probabilities` and `predicted_label`)."""
    return ([C.Z_MEAN, C.Z_LOG_VAR] + [C.LOG_LIKELIHOOD_KEY] * log_likelihood
            + [RECONSTRUCTION_ERROR] * reconstruction_error + [C.PROBABILITIES, PREDICTED_LABEL] * classes)


class Encoder:
    """Encodes batches of float32 images in [0, 1] with an export's signatures.

    Args:
        path: an export (see `resolve_version_dir`).
        log_likelihood: also return the `log_likelihood` signature's score per image.
        reconstruction_error: also return the mean squared error, over pixels, between
            each image and the `reconstruct` signature's output.
        An export with a `classify` signature (M2) also gets `probabilities` (N, K), its
        q(y|x), and `predicted_label` (N,) int64, their argmax.
        info: `describe_export` of `path` with these signatures, if the caller has it
            already (otherwise it is read again).

    Attributes:
        loader: "signatures only" (`loading.load_signatures`: the needed functions and
            variables alone) or "tf.saved_model.load" (exports that loader does not read).

    Example:
        >>> encoder = Encoder("exports/vae")
        >>> outputs = encoder(images)  # {"z_mean": (N, D), "z_log_var": (N, D)}
    """

    def __init__(self, path: str, log_likelihood: bool = False, reconstruction_error: bool = False,
                 info: ExportInfo | None = None):
        needed = needed_signatures(log_likelihood, reconstruction_error)
        self.info = info or describe_export(path, needed)
        if self.info.num_classes is not None:
            needed = [*needed, C.CLASSIFY]
        signatures = load_signatures(self.info.path, needed, read_meta_graph(self.info.path))
        self.loader = "signatures only" if signatures is not None else "tf.saved_model.load"
        if signatures is None:
            signatures = tf.saved_model.load(self.info.path).signatures
        self._encode = signatures[C.ENCODE]
        self._log_likelihood = signatures[C.LOG_LIKELIHOOD] if log_likelihood else None
        self._reconstruct = signatures[C.RECONSTRUCT] if reconstruction_error else None
        self._classify = signatures[C.CLASSIFY] if self.info.num_classes is not None else None
        self(np.zeros((1, *self.info.image_shape), np.float32))  # warm-up: TF prepares each function on its first call

    def output_keys(self) -> list[str]:
        return output_keys(self._log_likelihood is not None, self._reconstruct is not None,
                           self._classify is not None)

    def __call__(self, images) -> dict[str, np.ndarray]:
        """(N, H, W, C) float32, an array or a tensor -> columns by name, each with N rows.

        Safe to call from several threads at once (the signatures are stateless)."""
        parts: dict[str, list[np.ndarray]] = {key: [] for key in self.output_keys()}
        rows = len(images)
        for start in range(0, rows, C.MAX_BATCH):  # the signatures take MAX_BATCH rows
            chunk = tf.convert_to_tensor(images if rows <= C.MAX_BATCH else images[start:start + C.MAX_BATCH])
            encoded = self._encode(**{C.IMAGES: chunk})
            parts[C.Z_MEAN].append(encoded[C.Z_MEAN].numpy())
            parts[C.Z_LOG_VAR].append(encoded[C.Z_LOG_VAR].numpy())
            if self._log_likelihood is not None:
                scores = self._log_likelihood(**{C.IMAGES: chunk})[C.LOG_LIKELIHOOD_KEY]
                parts[C.LOG_LIKELIHOOD_KEY].append(scores.numpy())
            if self._reconstruct is not None:
                recon = self._reconstruct(**{C.IMAGES: chunk})[C.IMAGES]
                error = tf.reduce_mean(tf.math.squared_difference(recon, chunk), axis=[1, 2, 3])
                parts[RECONSTRUCTION_ERROR].append(error.numpy())
            if self._classify is not None:
                probabilities = self._classify(**{C.IMAGES: chunk})[C.PROBABILITIES].numpy()
                parts[C.PROBABILITIES].append(probabilities)
                parts[PREDICTED_LABEL].append(np.argmax(probabilities, axis=1).astype(np.int64))
        if not rows:
            width = {C.Z_MEAN: (0, self.info.latent_dim), C.Z_LOG_VAR: (0, self.info.latent_dim),
                     C.PROBABILITIES: (0, self.info.num_classes or 0)}
            return {key: np.zeros(width.get(key, (0,)), np.int64 if key == PREDICTED_LABEL else np.float32)
                    for key in parts}
        if len(parts[C.Z_MEAN]) == 1:
            return {key: values[0] for key, values in parts.items()}
        return {key: np.concatenate(values) for key, values in parts.items()}
