"""The exporter: layout, assets, signatures against the Keras model, versions, atomicity."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tensorflow as tf
from serving_testlib import IMAGE_SHAPE, LATENT_DIM, METRICS, RUN_CONFIG
from tensorflow_serving.apis import prediction_log_pb2

from model.evaluation import iwae_log_likelihood
from serving import contract as C
from serving.export import export_model
from serving.layout import list_versions


def call(loaded, name, **inputs):
    """Calls an in-process signature on numpy inputs; numpy outputs."""
    out = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def generate(loaded, n, seed, temperature=1.0, name=C.GENERATE):
    return call(
        loaded, name,
        **{C.NUM_SAMPLES: np.int32(n), C.SEED: np.asarray(seed, np.int64), C.TEMPERATURE: np.float32(temperature)},
    )


# === Layout and assets ===
def test_version_folder_layout(export_dir):
    assert export_dir.name == "1" and export_dir.parent.name == C.MODEL_NAME
    extra = export_dir / C.ASSETS_EXTRA
    for path in [export_dir / C.SAVED_MODEL_FILE, export_dir / "variables", extra / C.WARMUP_FILE]:
        assert path.exists(), path
    assert json.loads((extra / C.CONFIG_FILE).read_text()) == RUN_CONFIG
    assert json.loads((extra / C.METRICS_FILE).read_text()) == METRICS
    description = json.loads((extra / C.CONTRACT_FILE).read_text())
    assert description["contract_version"] == C.CONTRACT_VERSION
    assert (description["image_shape"], description["latent_dim"]) == ([*IMAGE_SHAPE], LATENT_DIM)
    assert not [p for p in export_dir.parent.iterdir() if p.name.startswith(".")]


def test_warmup_records_are_prediction_logs_for_every_signature(export_dir):
    names = []
    for record in tf.data.TFRecordDataset(str(export_dir / C.ASSETS_EXTRA / C.WARMUP_FILE)):
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = entry.predict_log.request
        assert request.model_spec.name == C.MODEL_NAME
        assert set(request.inputs) == {t.key for t in C.SIGNATURES[request.model_spec.signature_name].inputs}
        names.append(request.model_spec.signature_name)
    assert sorted(names) == sorted(C.SIGNATURES)


def test_signatures_match_the_contract(loaded):
    assert set(loaded.signatures) == set(C.SIGNATURES) | {C.DEFAULT_SIGNATURE}
    for name, spec in C.SIGNATURES.items():
        function = loaded.signatures[name]
        inputs = function.structured_input_signature[1]
        for t in spec.inputs:
            assert inputs[t.key].dtype.name == t.dtype
            assert tuple(inputs[t.key].shape) == t.resolve(IMAGE_SHAPE, LATENT_DIM)
        assert set(function.structured_outputs) == {t.key for t in spec.outputs}


# === Signatures against the Keras model ===
def test_encode_decode_reconstruct_match_keras(loaded, vae, images):
    z_mean, z_log_var = vae.encode(images)
    encoded = call(loaded, C.ENCODE, **{C.IMAGES: images})
    np.testing.assert_allclose(encoded[C.Z_MEAN], z_mean, atol=1e-5)
    np.testing.assert_allclose(encoded[C.Z_LOG_VAR], z_log_var, atol=1e-5)
    z = np.random.default_rng(1).normal(size=(5, LATENT_DIM)).astype(np.float32)
    np.testing.assert_allclose(call(loaded, C.DECODE, **{C.Z: z})[C.IMAGES], vae.decode(z), atol=1e-5)
    reconstructed = call(loaded, C.RECONSTRUCT, **{C.IMAGES: images})[C.IMAGES]
    np.testing.assert_allclose(reconstructed, vae.reconstruct(images), atol=1e-5)


def test_generate_is_stateless_decoding_of_seeded_normals(loaded, vae):
    first, again, other = generate(loaded, 6, [7, 0]), generate(loaded, 6, [7, 0]), generate(loaded, 6, [8, 0])
    np.testing.assert_array_equal(first[C.IMAGES], again[C.IMAGES])
    assert np.abs(first[C.IMAGES] - other[C.IMAGES]).max() > 1e-3
    z = tf.random.stateless_normal((6, LATENT_DIM), tf.constant([7, 0], tf.int64)) * 0.5
    half = generate(loaded, 6, [7, 0], temperature=0.5)
    np.testing.assert_allclose(half[C.Z], z, atol=1e-6)
    np.testing.assert_allclose(half[C.IMAGES], vae.decode(z), atol=1e-5)
    default = generate(loaded, 6, [7, 0], name=C.DEFAULT_SIGNATURE)
    np.testing.assert_array_equal(default[C.IMAGES], first[C.IMAGES])
    assert generate(loaded, 0, [1, 2])[C.IMAGES].shape == (0, *IMAGE_SHAPE)


def test_generate_batch_draws_what_generate_draws(loaded):
    batch = call(
        loaded, C.GENERATE_BATCH,
        **{C.NUM_SAMPLES: np.int32([3, 0, 5]), C.SEED: np.int64([[1, 2], [3, 4], [5, 6]]),
           C.TEMPERATURE: np.float32([0.5, 1.0, 2.0])},
    )
    parts = [generate(loaded, 3, [1, 2], 0.5), generate(loaded, 5, [5, 6], 2.0)]
    np.testing.assert_array_equal(batch[C.Z], np.concatenate([p[C.Z] for p in parts]))
    np.testing.assert_allclose(batch[C.IMAGES], np.concatenate([p[C.IMAGES] for p in parts]), atol=1e-6)


def test_log_likelihood_is_iwae_per_image_independent_of_the_batch(loaded, vae, images):
    scores = call(loaded, C.LOG_LIKELIHOOD, **{C.IMAGES: images})[C.LOG_LIKELIHOOD_KEY]
    seed = tf.constant(C.IWAE_SEED, tf.int64)
    for i in (0, 5):
        alone = call(loaded, C.LOG_LIKELIHOOD, **{C.IMAGES: images[i : i + 1]})[C.LOG_LIKELIHOOD_KEY]
        expected = iwae_log_likelihood(vae, images[i : i + 1], num_samples=C.IWAE_NUM_SAMPLES, seed=seed)
        np.testing.assert_allclose(alone, expected, rtol=1e-5)
        np.testing.assert_allclose(scores[i], alone[0], rtol=1e-5)
    assert np.all(scores < 0)


def test_in_graph_limits_answer_invalid_argument(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError, match=C.NUM_SAMPLES):
        generate(loaded, C.MAX_NUM_SAMPLES + 1, [0, 0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=str(C.MAX_BATCH)):
        call(loaded, C.DECODE, **{C.Z: np.zeros((C.MAX_BATCH + 1, LATENT_DIM), np.float32)})


# === Versions and atomicity ===
@pytest.mark.slow
def test_versions_count_up_and_are_never_overwritten(tmp_path, vae):
    first = export_model(vae, tmp_path)
    second = export_model(vae, tmp_path)
    assert (first.name, second.name) == ("1", "2")
    assert list_versions(tmp_path / C.MODEL_NAME) == [1, 2]
    with pytest.raises(FileExistsError):
        export_model(vae, tmp_path, version=2)
    with pytest.raises(ValueError):
        export_model(vae, tmp_path, version=0)
    assert export_model(vae, tmp_path, model_name="other", version=7).name == "7"


def test_a_watcher_never_sees_half_a_version(tmp_path, vae):
    model_dir = tmp_path / C.MODEL_NAME
    model_dir.mkdir()
    seen_versions, seen_staging, incomplete = set(), set(), []
    done = threading.Event()

    def watch():
        while True:
            finished = done.is_set()  # one more look after the export returned
            for entry in model_dir.iterdir():
                if entry.name.isdigit():
                    seen_versions.add(entry.name)
                    required = [C.SAVED_MODEL_FILE, "variables/variables.index", f"{C.ASSETS_EXTRA}/{C.WARMUP_FILE}"]
                    incomplete.extend(f"{entry.name}/{r}" for r in required if not (entry / r).exists())
                else:
                    seen_staging.add(entry.name)
            if finished:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        export_model(vae, tmp_path)
    finally:
        done.set()
        watcher.join()
    assert seen_staging, "the watcher never saw the export in progress"
    assert seen_versions == {"1"} and not incomplete


def test_a_failed_export_leaves_nothing_behind(tmp_path, vae):
    with pytest.raises(TypeError):
        export_model(vae, tmp_path, metrics={"not json": object()})
    assert list((tmp_path / C.MODEL_NAME).iterdir()) == []
