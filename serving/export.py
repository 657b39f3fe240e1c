"""Turns a trained VAE into a versioned SavedModel that TF Serving and `vae serve` load.

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
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from model.evaluation import iwae_log_likelihood
from serving import contract as C
from serving.tensors import to_tensor_proto

log = logging.getLogger(__name__)


# === Endpoints ===
def _assert(condition, message: str):
    """An in-graph check: TF Serving answers INVALID_ARGUMENT with `message` when it fails."""
    return tf.debugging.Assert(condition, [message])


def _f32(tensor):
    """Outputs are float32 whatever the model computes in (mixed precision)."""
    return tf.cast(tensor, tf.float32)


def _check_rows(tensor) -> None:
    _assert(tf.shape(tensor)[0] <= C.MAX_BATCH, f"at most {C.MAX_BATCH} rows per request")


def _endpoints(vae) -> dict[str, Any]:
    """The signature functions by name; each takes and returns a dict keyed by the contract."""
    latent_dim = int(vae.latent_dim)
    iwae_seed = tf.constant(C.IWAE_SEED, tf.int64)

    def sample(num_samples, seed, temperature):  # -> (num_samples, D)
        shape = tf.stack([num_samples, latent_dim])
        return tf.random.stateless_normal(shape, seed) * temperature

    def check_generate(num_samples, temperature) -> None:
        _assert(
            tf.reduce_all((num_samples >= 0) & (num_samples <= C.MAX_NUM_SAMPLES)),
            f"{C.NUM_SAMPLES} must be within [0, {C.MAX_NUM_SAMPLES}]",
        )
        _assert(tf.reduce_all(tf.math.is_finite(temperature)), f"{C.TEMPERATURE} must be finite")

    def generate(inputs):
        check_generate(inputs[C.NUM_SAMPLES], inputs[C.TEMPERATURE])
        z = sample(inputs[C.NUM_SAMPLES], inputs[C.SEED], inputs[C.TEMPERATURE])
        return {C.IMAGES: _f32(vae.decode(z)), C.Z: z}

    def generate_batch(inputs):
        counts, seeds, temperatures = inputs[C.NUM_SAMPLES], inputs[C.SEED], inputs[C.TEMPERATURE]
        check_generate(counts, temperatures)
        _assert(tf.reduce_sum(counts) <= C.MAX_BATCH, f"at most {C.MAX_BATCH} rows per request")
        size = tf.shape(counts)[0]
        # The same draws as `generate` for each (num_samples, seed, temperature) row.
        parts = tf.TensorArray(tf.float32, size=size, infer_shape=False, element_shape=[None, latent_dim])
        _, parts = tf.while_loop(
            lambda i, _: i < size,
            lambda i, ta: (i + 1, ta.write(i, sample(counts[i], seeds[i], temperatures[i]))),
            (tf.constant(0), parts),
        )
        z = tf.reshape(parts.concat(), (-1, latent_dim))  # (sum(num_samples), D)
        return {C.IMAGES: _f32(vae.decode(z)), C.Z: z}

    def encode(inputs):
        _check_rows(inputs[C.IMAGES])
        z_mean, z_log_var = vae.encode(inputs[C.IMAGES])
        return {C.Z_MEAN: _f32(z_mean), C.Z_LOG_VAR: _f32(z_log_var)}

    def decode(inputs):
        _check_rows(inputs[C.Z])
        return {C.IMAGES: _f32(vae.decode(inputs[C.Z]))}

    def reconstruct(inputs):
        _check_rows(inputs[C.IMAGES])
        return {C.IMAGES: _f32(vae.reconstruct(inputs[C.IMAGES]))}

    def log_likelihood(inputs):
        _check_rows(inputs[C.IMAGES])

        def one(image):  # fixed draws per image: a score does not depend on the other images
            return _f32(iwae_log_likelihood(vae, image[None], num_samples=C.IWAE_NUM_SAMPLES, seed=iwae_seed)[0])

        scores = tf.map_fn(one, inputs[C.IMAGES], fn_output_signature=tf.float32)
        return {C.LOG_LIKELIHOOD_KEY: scores}

    return {
        C.GENERATE: generate,
        C.ENCODE: encode,
        C.DECODE: decode,
        C.RECONSTRUCT: reconstruct,
        C.LOG_LIKELIHOOD: log_likelihood,
        C.GENERATE_BATCH: generate_batch,
    }


def _input_signature(spec: C.SignatureSpec, image_shape, latent_dim: int) -> list[dict]:
    return [
        {
            t.key: tf.TensorSpec(t.resolve(image_shape, latent_dim), tf.as_dtype(t.dtype), name=t.key)
            for t in spec.inputs
        }
    ]


def _write_saved_model(vae, path: Path) -> None:
    archive = keras.export.ExportArchive()
    archive.track(vae)
    image_shape, latent_dim = tuple(vae.image_shape), int(vae.latent_dim)
    functions = _endpoints(vae)
    # The first endpoint is also registered as `serving_default` (TF Serving's default).
    order = [C.DEFAULT_SIGNATURE_TARGET] + [n for n in functions if n != C.DEFAULT_SIGNATURE_TARGET]
    for name in order:
        signature = _input_signature(C.SIGNATURES[name], image_shape, latent_dim)
        archive.add_endpoint(name, functions[name], input_signature=signature)
    archive.write_out(str(path), verbose=False)


# === assets.extra ===
def _warmup_inputs(name: str, image_shape, latent_dim: int) -> dict[str, Any]:
    """Small, valid inputs for a signature (one row each)."""
    if name == C.GENERATE:
        return {C.NUM_SAMPLES: np.int32(1), C.SEED: np.zeros(2, np.int64), C.TEMPERATURE: np.float32(1.0)}
    if name == C.GENERATE_BATCH:
        return {
            C.NUM_SAMPLES: np.ones(1, np.int32),
            C.SEED: np.zeros((1, 2), np.int64),
            C.TEMPERATURE: np.ones(1, np.float32),
        }
    rows = {C.IMAGES: np.full((1, *image_shape), 0.5, np.float32), C.Z: np.zeros((1, latent_dim), np.float32)}
    return {t.key: rows[t.key] for t in C.SIGNATURES[name].inputs}


def _write_warmup(path: Path, model_name: str, image_shape, latent_dim: int) -> None:
    """TF Serving's warm-up file: a TFRecord of PredictionLog protos, one per signature."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for name in C.SIGNATURES:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = name
            for key, value in _warmup_inputs(name, image_shape, latent_dim).items():
                request.inputs[key].CopyFrom(to_tensor_proto(value))
            record = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(record.SerializeToString())


def _write_assets(path: Path, vae, model_name: str, run_config: dict | None, metrics: dict | None) -> None:
    extra = path / C.ASSETS_EXTRA
    extra.mkdir(parents=True, exist_ok=True)
    image_shape, latent_dim = tuple(vae.image_shape), int(vae.latent_dim)
    if run_config is None:
        run_config = {"model": vae.model_config.to_dict()}
    (extra / C.CONFIG_FILE).write_text(json.dumps(run_config, indent=2, sort_keys=True))
    (extra / C.METRICS_FILE).write_text(json.dumps(metrics or {}, indent=2, sort_keys=True))
    description = {
        "contract_version": C.CONTRACT_VERSION,
        "model_name": model_name,
        "image_shape": list(image_shape),
        "latent_dim": latent_dim,
        "iwae_num_samples": C.IWAE_NUM_SAMPLES,
        "signatures": {name: spec.doc for name, spec in C.SIGNATURES.items()},
        "default_signature": C.DEFAULT_SIGNATURE_TARGET,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
    (extra / C.CONTRACT_FILE).write_text(json.dumps(description, indent=2, sort_keys=True))
    _write_warmup(extra / C.WARMUP_FILE, model_name, image_shape, latent_dim)


def _verify(path: Path) -> None:
    """Loads the export back and checks every contract signature's keys and dtypes."""
    loaded = tf.saved_model.load(str(path))
    for name, spec in {**C.SIGNATURES, C.DEFAULT_SIGNATURE: C.SIGNATURES[C.DEFAULT_SIGNATURE_TARGET]}.items():
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
def existing_versions(model_dir: Path) -> list[int]:
    """The integer version folders under a model folder, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


def export_model(
    vae,
    base_dir: str | os.PathLike,
    model_name: str = C.MODEL_NAME,
    version: int | None = None,
    run_config: dict | None = None,
    metrics: dict | None = None,
) -> Path:
    """Exports `vae` as version `version` of `model_name` under `base_dir`.

    Args:
        vae: a built `model.VAE` (anything with `encode`, `decode`, `reconstruct`,
            `latent_dim`, `image_shape`, `model_config`).
        base_dir: the folder holding one sub-folder per model name.
        model_name: the served model's name.
        version: the version number; None takes the next integer after the existing ones.
        run_config: the run's full config, stored as `assets.extra/config.json`
            (default: `{"model": vae.model_config.to_dict()}`).
        metrics: test metrics, stored as `assets.extra/metrics.json`.

    Returns:
        The version folder, `<base_dir>/<model_name>/<version>`.

    Raises:
        FileExistsError: `version` was given and already exists.
        ValueError: `version` is not a positive integer.
    """
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ValueError(f"version must be a positive integer, got {version!r}")
    model_dir = Path(base_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    # Hidden (non-integer) name on the same file system: TF Serving ignores it, rename is atomic.
    staging = model_dir / f".staging-{uuid.uuid4().hex}"
    try:
        _write_saved_model(vae, staging)
        _write_assets(staging, vae, model_name, run_config, metrics)
        _verify(staging)
        target = _publish(staging, model_dir, version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s version %s to %s", model_name, target.name, target)
    return target


def _publish(staging: Path, model_dir: Path, version: int | None) -> Path:
    """Renames the finished folder to its version number (the next free one if None)."""
    while True:
        taken = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
        number = version if version is not None else max(taken, default=0) + 1
        target = model_dir / str(number)
        if target.exists():
            if version is not None:
                raise FileExistsError(f"version {number} already exists at {target}")
            continue
        try:
            os.rename(staging, target)  # fails if another exporter took the number meanwhile
            return target
        except OSError:
            if version is not None or not target.exists():
                raise


def export_workdir(
    workdir: str | os.PathLike,
    base_dir: str | os.PathLike,
    model_name: str = C.MODEL_NAME,
    version: int | None = None,
) -> Path:
    """Exports the model a `vae train` run left in `workdir`.

    Args:
        workdir: holds `model.keras`, `config.json` and (optionally) `metrics.json`.
        base_dir: see `export_model`.
        model_name: see `export_model`.
        version: see `export_model`.

    Returns:
        The version folder.

    Raises:
        FileNotFoundError: `workdir/model.keras` does not exist.
    """
    import model  # noqa: F401  (registers the custom Keras objects)

    workdir = Path(workdir)
    model_file = workdir / "model.keras"
    if not model_file.is_file():
        raise FileNotFoundError(f"no trained model at {model_file}")
    vae = keras.models.load_model(model_file, compile=False)

    def read(name: str) -> dict | None:
        path = workdir / name
        return json.loads(path.read_text()) if path.is_file() else None

    return export_model(vae, base_dir, model_name, version, read(C.CONFIG_FILE), read(C.METRICS_FILE))
