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
from serving.errors import ExportError
from serving.layout import list_versions
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


def served_kind(vae) -> str:
    """The served kind (`contract.PLAIN_KIND`, ...) of a model object, from what it declares
    it serves: its `takes_labels`, `classifies` and `completes`."""
    return C.kind_of_features(vae.takes_labels, vae.classifies, vae.completes)


def _endpoints(vae) -> dict[str, Any]:
    """The signature functions by name; each takes and returns a dict keyed by the contract."""
    if vae.condition is None:
        return _plain_endpoints(vae)
    return _conditional_endpoints(vae, served_kind(vae))


def _plain_endpoints(vae) -> dict[str, Any]:
    """The unconditional VAE's signatures (`contract.SIGNATURES`).

    Generation goes through the model's `prior_draw(num_samples, seed, temperature,
    components)` (rows of `draw_dim` values: N(0, T^2 I) codes, the VampPrior's mixture,
    or a two-layer model's top code and noise) and `decode_draw(draws)` -> (images, z).
    """
    draw_dim = int(vae.draw_dim)
    iwae_seed = tf.constant(C.IWAE_SEED, tf.int64)
    # What the prior computes from trained weights (the VampPrior's posteriors at its
    # pseudo-inputs; None for N(0, I)) is frozen into the export: `generate` does not
    # re-encode it.
    components = vae.prior.components()
    if components is not None:
        components = tuple(tf.constant(np.asarray(c, np.float32)) for c in components)

    def sample(num_samples, seed, temperature):  # -> (num_samples, draw_dim)
        return vae.prior_draw(num_samples, seed, temperature, components)

    def images_and_z(draws):  # -> (images, z (N, D))
        images, z = vae.decode_draw(draws)
        return _f32(images), _f32(z)

    def check_generate(num_samples, temperature):
        """(num_samples, temperature) behind the checks: the draw runs after them, so a bad
        request fails with the check's message, not with the draw's."""
        checks = [
            _assert(
                tf.reduce_all((num_samples >= 0) & (num_samples <= C.MAX_NUM_SAMPLES)),
                f"{C.NUM_SAMPLES} must be within [0, {C.MAX_NUM_SAMPLES}]",
            ),
            _assert(tf.reduce_all(tf.math.is_finite(temperature)), f"{C.TEMPERATURE} must be finite"),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(num_samples), tf.identity(temperature)

    def generate(inputs):
        num_samples, temperature = check_generate(inputs[C.NUM_SAMPLES], inputs[C.TEMPERATURE])
        images, z = images_and_z(sample(num_samples, inputs[C.SEED], temperature))
        return {C.IMAGES: images, C.Z: z}

    def generate_batch(inputs):
        counts, temperatures = check_generate(inputs[C.NUM_SAMPLES], inputs[C.TEMPERATURE])
        seeds = inputs[C.SEED]
        with tf.control_dependencies([_assert(tf.reduce_sum(counts) <= C.MAX_BATCH,
                                              f"at most {C.MAX_BATCH} rows per request")]):
            counts = tf.identity(counts)
        size = tf.shape(counts)[0]
        # The same draws as `generate` for each (num_samples, seed, temperature) row.
        parts = tf.TensorArray(tf.float32, size=size, infer_shape=False, element_shape=[None, draw_dim])
        _, parts = tf.while_loop(
            lambda i, _: i < size,
            lambda i, ta: (i + 1, ta.write(i, sample(counts[i], seeds[i], temperatures[i]))),
            (tf.constant(0), parts),
        )
        images, z = images_and_z(tf.reshape(parts.concat(), (-1, draw_dim)))  # (sum(num_samples), ...)
        return {C.IMAGES: images, C.Z: z}

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
            return _f32(vae.log_likelihood(image[None], num_samples=C.IWAE_NUM_SAMPLES, seed=iwae_seed)[0])

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


def _conditional_endpoints(vae, kind: str) -> dict[str, Any]:
    """The signatures of a label CVAE, M2 or half CVAE (`contract.signatures_for(kind)`).

    The model object is used through `decode(z, c)`, `encode(images[, labels])`,
    `reconstruct`, `log_likelihood`, its `condition` (`one_hot`, `vector`, `assemble`) and,
    for M2, `classify`.
    """
    condition = vae.condition
    num_classes = vae.num_classes
    iwae_seed = tf.constant(C.IWAE_SEED, tf.int64)

    def sample(count, seed, temperature):  # -> (count, D), the draws of `generate`
        return vae.prior_draw(count, seed, temperature)

    def check_temperature(temperature) -> None:
        _assert(tf.reduce_all(tf.math.is_finite(temperature)), f"{C.TEMPERATURE} must be finite")

    def check_labels(labels, rows=None):
        """(labels, rows) behind the label checks: what is computed from them runs after
        the checks, so a bad request fails with the check's message."""
        checks = [
            _assert(
                tf.reduce_all((labels >= 0) & (labels < num_classes)),
                f"{C.LABELS} must be within [0, {num_classes})",
            ),
            _assert(tf.size(labels) <= C.MAX_BATCH, f"at most {C.MAX_BATCH} {C.LABELS} per request"),
        ]
        if rows is not None:
            checks.append(_assert(tf.equal(tf.shape(labels)[0], tf.shape(rows)[0]), f"one of {C.LABELS} per row"))
        with tf.control_dependencies([c for c in checks if c is not None]):
            return tf.identity(labels), (tf.identity(rows) if rows is not None else None)

    def one_hot(labels):
        return condition.one_hot(labels)

    def generate(inputs):
        labels, _ = check_labels(inputs[C.LABELS])
        check_temperature(inputs[C.TEMPERATURE])
        z = sample(tf.shape(labels)[0], inputs[C.SEED], inputs[C.TEMPERATURE])
        return {C.IMAGES: _f32(vae.decode(z, one_hot(labels))), C.Z: z}

    def decode(inputs):
        _check_rows(inputs[C.Z])
        labels, z = check_labels(inputs[C.LABELS], inputs[C.Z])
        return {C.IMAGES: _f32(vae.decode(z, one_hot(labels)))}

    def encode_labels(inputs):
        _check_rows(inputs[C.IMAGES])
        labels, images = check_labels(inputs[C.LABELS], inputs[C.IMAGES])
        z_mean, z_log_var = vae.encode(images, labels)
        return {C.Z_MEAN: _f32(z_mean), C.Z_LOG_VAR: _f32(z_log_var)}

    def encode(inputs):  # M2 (y = argmax q(y|x)) and a half CVAE (the observed half)
        _check_rows(inputs[C.IMAGES])
        z_mean, z_log_var = vae.encode(inputs[C.IMAGES])
        return {C.Z_MEAN: _f32(z_mean), C.Z_LOG_VAR: _f32(z_log_var)}

    def reconstruct_labels(inputs):
        _check_rows(inputs[C.IMAGES])
        labels, images = check_labels(inputs[C.LABELS], inputs[C.IMAGES])
        return {C.IMAGES: _f32(vae.reconstruct(images, labels))}

    def reconstruct(inputs):
        _check_rows(inputs[C.IMAGES])
        return {C.IMAGES: _f32(vae.reconstruct(inputs[C.IMAGES]))}

    def log_likelihood_labels(inputs):
        _check_rows(inputs[C.IMAGES])
        labels, images = check_labels(inputs[C.LABELS], inputs[C.IMAGES])

        def one(pair):  # fixed draws per image: a score does not depend on the other images
            image, label = pair
            return _f32(vae.log_likelihood(image[None], num_samples=C.IWAE_NUM_SAMPLES, seed=iwae_seed,
                                           labels=label[None])[0])

        scores = tf.map_fn(one, (images, labels), fn_output_signature=tf.float32)
        return {C.LOG_LIKELIHOOD_KEY: scores}

    def log_likelihood(inputs):
        _check_rows(inputs[C.IMAGES])

        def one(image):
            return _f32(vae.log_likelihood(image[None], num_samples=C.IWAE_NUM_SAMPLES, seed=iwae_seed)[0])

        scores = tf.map_fn(one, inputs[C.IMAGES], fn_output_signature=tf.float32)
        return {C.LOG_LIKELIHOOD_KEY: scores}

    def classify(inputs):
        _check_rows(inputs[C.IMAGES])
        return {C.PROBABILITIES: _f32(vae.classify(inputs[C.IMAGES]))}

    def complete(inputs):
        images = inputs[C.IMAGES]
        _check_rows(images)
        check_temperature(inputs[C.TEMPERATURE])
        z = sample(tf.shape(images)[0], inputs[C.SEED], inputs[C.TEMPERATURE])
        generated = vae.decode(z, condition.vector(images))
        return {C.IMAGES: _f32(condition.assemble(images, _f32(generated)))}

    # Each signature of the kind, by its name and whether the contract has it take labels.
    implementations = {
        (C.GENERATE, True): generate, (C.DECODE, True): decode, (C.CLASSIFY, False): classify,
        (C.COMPLETE, False): complete, (C.ENCODE, True): encode_labels, (C.ENCODE, False): encode,
        (C.RECONSTRUCT, True): reconstruct_labels, (C.RECONSTRUCT, False): reconstruct,
        (C.LOG_LIKELIHOOD, True): log_likelihood_labels, (C.LOG_LIKELIHOOD, False): log_likelihood,
    }
    functions = {name: implementations[name, any(t.key == C.LABELS for t in spec.inputs)]
                 for name, spec in C.signatures_for(kind).items()}
    assert set(functions) == set(C.signatures_for(kind)), (kind, sorted(functions))
    return functions


def _input_signature(spec: C.SignatureSpec, image_shape, latent_dim: int, num_classes: int | None = None) -> list[dict]:
    return [
        {
            t.key: tf.TensorSpec(t.resolve(image_shape, latent_dim, num_classes), tf.as_dtype(t.dtype), name=t.key)
            for t in spec.inputs
        }
    ]


def _write_saved_model(vae, path: Path) -> None:
    archive = keras.export.ExportArchive()
    archive.track(vae)
    image_shape, latent_dim = tuple(vae.image_shape), int(vae.latent_dim)
    kind = served_kind(vae)
    specs, default = C.signatures_for(kind), C.default_signature_for(kind)
    functions = _endpoints(vae)
    # The first endpoint is also registered as `serving_default` (TF Serving's default).
    order = [default] + [n for n in functions if n != default]
    for name in order:
        signature = _input_signature(specs[name], image_shape, latent_dim, vae.num_classes)
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


def _write_warmup(path: Path, model_name: str, image_shape, latent_dim: int,
                  specs: dict[str, C.SignatureSpec] = C.SIGNATURES) -> None:
    """TF Serving's warm-up file: a TFRecord of PredictionLog protos, one per signature."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for name, spec in specs.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = name
            for key, value in _warmup_inputs(spec, image_shape, latent_dim).items():
                request.inputs[key].CopyFrom(to_tensor_proto(value))
            record = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(record.SerializeToString())


def _write_assets(path: Path, vae, model_name: str, run_config: dict | None, metrics: dict | None,
                  class_names: list[str] | None = None) -> None:
    extra = path / C.ASSETS_EXTRA
    extra.mkdir(parents=True, exist_ok=True)
    image_shape, latent_dim = tuple(vae.image_shape), int(vae.latent_dim)
    kind = served_kind(vae)
    specs = C.signatures_for(kind)
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
        "signatures": {name: spec.doc for name, spec in specs.items()},
        "default_signature": C.default_signature_for(kind),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
    if vae.condition is not None:  # (the plain VAE's description stays as it always was)
        description[C.CONTRACT_KIND_FIELD] = kind
        description[C.CONTRACT_CONDITION_FIELD] = vae.condition.name
    if vae.takes_labels:
        description[C.NUM_CLASSES_FIELD] = vae.num_classes
        description[C.CLASS_NAMES_FIELD] = class_names
    (extra / C.CONTRACT_FILE).write_text(json.dumps(description, indent=2, sort_keys=True))
    _write_warmup(extra / C.WARMUP_FILE, model_name, image_shape, latent_dim, specs)


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
        vae: a built model of any kind (`model.kinds`): `encode`, `decode`, `reconstruct`,
            `log_likelihood`, `latent_dim`, `image_shape`, `model_config`, `condition`,
            `prior`, `prior_draw`, `decode_draw`, `draw_dim`, and what it serves,
            `takes_labels`, `classifies` (then `classify`), `completes` (then `complete`'s
            parts: `condition.vector`, `condition.assemble`), `num_classes`.
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
    kind = served_kind(vae)
    names = None
    if vae.takes_labels:
        count = vae.num_classes
        names = [str(k) for k in range(count)] if class_names is None else [str(n) for n in class_names]
        if len(names) != count:
            raise ExportError(f"class_names must name the model's {count} classes, got {len(names)}: {names}")
    model_dir = Path(base_dir) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    # Hidden (non-integer) name on the same file system: TF Serving ignores it, rename is atomic.
    staging = model_dir / f".staging-{uuid.uuid4().hex}"
    try:
        _write_saved_model(vae, staging)
        _write_assets(staging, vae, model_name, run_config, metrics, names)
        _verify(staging, kind)
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
