"""Turns a trained VAE (or CVAE, or M2) into a versioned SavedModel that TF Serving and `vae serve` load.

Layout (TF Serving polls `<base_dir>/<model_name>` for integer version folders):

    <base_dir>/<model_name>/<version>/saved_model.pb, variables/
    <base_dir>/<model_name>/<version>/assets.extra/config.json, metrics.json,
        serving_contract.json, tf_serving_warmup_requests

A version is written to a hidden temporary folder next to its final place, checked by
loading it back, and renamed into place: a server never sees half a version.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving import contract as C
from serving.description import ExportDescription
from serving.endpoints import endpoints, served_kind
from serving.errors import ExportError
from serving.layout import list_versions
from serving.tensors import to_tensor_proto

log = logging.getLogger(__name__)


# === The SavedModel ===
def _input_signature(spec: C.SignatureSpec, image_shape, latent_dim: int, num_classes: int | None = None) -> list[dict]:
    return [
        {
            t.key: tf.TensorSpec(t.resolve(image_shape, latent_dim, num_classes), tf.as_dtype(t.dtype), name=t.key)
            for t in spec.inputs
        }
    ]


def _write_saved_model(vae, path: Path, description: ExportDescription) -> None:
    """The model's signatures (`endpoints`) with the contract's input shapes and dtypes."""
    archive = keras.export.ExportArchive()
    archive.track(vae)
    specs, default = C.signatures_for(description.kind), description.default_signature
    functions = endpoints(vae)
    # The first endpoint is also registered as `serving_default` (TF Serving's default).
    for name in [default] + [n for n in functions if n != default]:
        signature = _input_signature(specs[name], description.image_shape, description.latent_dim,
                                     description.num_classes)
        archive.add_endpoint(name, functions[name], input_signature=signature)
    archive.write_out(str(path), verbose=False)


# === assets.extra ===
def _warmup_inputs(spec: C.SignatureSpec, image_shape, latent_dim: int) -> dict[str, Any]:
    """Small, valid inputs for a signature (one row each; label 0)."""
    if spec.name == C.GENERATE_BATCH:
        return {
            C.NUM_SAMPLES: np.ones(1, np.int32),
            C.SEED: np.zeros((1, 2), np.int64),
            C.TEMPERATURE: np.ones(1, np.float32),
        }
    values = {
        C.NUM_SAMPLES: np.int32(1),
        C.SEED: np.zeros(2, np.int64),
        C.TEMPERATURE: np.float32(1.0),
        C.IMAGES: np.full((1, *image_shape), 0.5, np.float32),
        C.Z: np.zeros((1, latent_dim), np.float32),
        C.LABELS: np.zeros(1, np.int32),
    }
    return {t.key: values[t.key] for t in spec.inputs}


def _write_warmup(path: Path, description: ExportDescription) -> None:
    """TF Serving's warm-up file: a TFRecord of PredictionLog protos, one per signature."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for name, spec in C.signatures_for(description.kind).items():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = description.model_name
            request.model_spec.signature_name = name
            for key, value in _warmup_inputs(spec, description.image_shape, description.latent_dim).items():
                request.inputs[key].CopyFrom(to_tensor_proto(value))
            record = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(record.SerializeToString())


def _write_assets(path: Path, description: ExportDescription, run_config: dict, metrics: dict | None) -> None:
    extra = path / C.ASSETS_EXTRA
    extra.mkdir(parents=True, exist_ok=True)
    (extra / C.CONFIG_FILE).write_text(json.dumps(run_config, indent=2, sort_keys=True))
    (extra / C.METRICS_FILE).write_text(json.dumps(metrics or {}, indent=2, sort_keys=True))
    description.write(path)
    _write_warmup(extra / C.WARMUP_FILE, description)


def _verify(path: Path, kind: str = C.PLAIN_KIND) -> None:
    """Loads the export back and checks every contract signature's keys and dtypes."""
    loaded = tf.saved_model.load(str(path))
    specs = C.signatures_for(kind)
    for name, spec in {**specs, C.DEFAULT_SIGNATURE: specs[C.default_signature_for(kind)]}.items():
        if name not in loaded.signatures:
            raise RuntimeError(f"export at {path} lacks signature {name!r}")
        function = loaded.signatures[name]
        found = {
            **{k: s.dtype.name for k, s in function.structured_input_signature[1].items()},
            **{k: s.dtype.name for k, s in function.structured_outputs.items()},
        }
        expected = {t.key: t.dtype for t in (*spec.inputs, *spec.outputs)}
        if found != expected:
            raise RuntimeError(f"signature {name!r} has tensors {found}, the contract says {expected}")


# === Versions ===
def export_model(
    vae,
    base_dir: str | os.PathLike,
    model_name: str = C.MODEL_NAME,
    version: int | None = None,
    run_config: dict | None = None,
    metrics: dict | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Exports `vae` as version `version` of `model_name` under `base_dir`.

    The signatures are those of the model's served kind (`contract.signatures_for`): a
    plain VAE's, a label CVAE's, M2's or a half CVAE's.

    Args:
        vae: a built model of any kind (`model.kinds`): its `latent_dim`, `image_shape`,
            `model_config`, and what `endpoints.endpoints` calls.
        base_dir: the folder holding one sub-folder per model name.
        model_name: the served model's name.
        version: the version number; None takes the next integer after the existing ones.
        run_config: the run's full config, stored as `assets.extra/config.json`
            (default: `{"model": vae.model_config.to_dict()}`).
        metrics: test metrics, stored as `assets.extra/metrics.json`.
        class_names: the name of each class of a label-conditioned model (CVAE on labels,
            M2), K of them, stored in `assets.extra/serving_contract.json`
            (`class_names`); None: the class numbers "0", "1", ... Ignored for other kinds.

    Returns:
        The version folder, `<base_dir>/<model_name>/<version>`.

    Raises:
        FileExistsError: `version` was given and already exists.
        ExportError: `version` is not a positive integer, or `class_names` does not name
            K classes (a ValueError).
    """
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ExportError(f"version must be a positive integer, got {version!r}")
    names = None
    if vae.takes_labels:
        count = vae.num_classes
        names = [str(k) for k in range(count)] if class_names is None else [str(n) for n in class_names]
        if len(names) != count:
            raise ExportError(f"class_names must name the model's {count} classes, got {len(names)}: {names}")
    description = ExportDescription.of_kind(
        served_kind(vae), model_name, vae.image_shape, vae.latent_dim, tensorflow_version=tf.__version__,
        keras_version=keras.__version__, condition=None if vae.condition is None else vae.condition.name,
        num_classes=vae.num_classes, class_names=names,
    )
    model_dir = Path(base_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    # Hidden (non-integer) name on the same file system: TF Serving ignores it, rename is atomic.
    staging = model_dir / f".staging-{uuid.uuid4().hex}"
    try:
        _write_saved_model(vae, staging, description)
        if run_config is None:
            run_config = {"model": vae.model_config.to_dict()}
        _write_assets(staging, description, run_config, metrics)
        _verify(staging, description.kind)
        target = _publish(staging, model_dir, version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s version %s to %s", model_name, target.name, target)
    return target


def _publish(staging: Path, model_dir: Path, version: int | None) -> Path:
    """Renames the finished folder to its version number (the next free one if None)."""
    number = version if version is not None else max(list_versions(model_dir), default=0) + 1
    while True:
        target = model_dir / str(number)
        if target.exists():  # a folder another exporter just took, or a file of that name
            if version is not None:
                raise FileExistsError(f"version {number} already exists at {target}")
            number += 1
            continue
        try:
            os.rename(staging, target)  # fails if another exporter took the number meanwhile
            return target
        except OSError:
            if version is not None or not target.exists():
                raise
