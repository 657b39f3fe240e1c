"""Label and half models served as TF Serving serves them: a label CVAE's and M2's
signatures (generate with labels, M2's classify), a half CVAE's complete, the class names
in the export, and TF Serving's codes for bad labels and for signatures a model does not
have, in-process and over real gRPC on 127.0.0.1."""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from serving_testlib import CLASS_NAMES, NUM_CLASSES, SMALL_IMAGE_SHAPE, build_conditional, start_server

from core.config import ConfigError
from serving import contract as C
from serving.batching import BatchingOptions
from serving.cli import register
from serving.client import ServingError, VAEClient
from serving.export import export_model
from serving.grid import image_grid, upscale

LATENT = 3
KINDS = {"label": C.LABEL_KIND, "m2": C.M2_KIND, "half": C.HALF_KIND}


def call(loaded, name, **inputs):
    """Calls an in-process signature on numpy inputs; numpy outputs."""
    out = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def draw_inputs(seed=(7, 0), temperature=1.0):
    return {C.SEED: np.asarray(seed, np.int64), C.TEMPERATURE: np.float32(temperature)}


@pytest.fixture(scope="module")
def models():
    return {"label": build_conditional("cvae", "label"), "m2": build_conditional("m2"),
            "half": build_conditional("cvae", "left_half")}


@pytest.fixture(scope="module")
def small_images():
    return np.random.default_rng(0).random((6, *SMALL_IMAGE_SHAPE), dtype=np.float32)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, models):
    """Version 1 of models `label`, `m2` and `half` under one base folder."""
    base = tmp_path_factory.mktemp("conditional")
    return {
        "label": export_model(models["label"], base, "label", class_names=CLASS_NAMES),
        "m2": export_model(models["m2"], base, "m2", class_names=CLASS_NAMES),
        "half": export_model(models["half"], base, "half"),
    }


@pytest.fixture(scope="module")
def loaded(exports):
    return {name: tf.saved_model.load(str(path)) for name, path in exports.items()}


@pytest.fixture(scope="module")
def servers(exports):
    started = {name: start_server(path.parent, model_name=name, poll_seconds=0) for name, path in exports.items()}
    yield started
    for server in started.values():
        server.stop(grace=1)


@pytest.fixture(scope="module")
def clients(servers):
    made = {name: VAEClient(f"127.0.0.1:{server.port}", model_name=name, timeout=30)
            for name, server in servers.items()}
    for client in made.values():
        client.wait_until_ready(30)
    yield made
    for client in made.values():
        client.close()


# === The export ===
def test_each_kind_exports_its_contract_signatures_and_the_class_names(exports, loaded):
    for name, kind in KINDS.items():
        specs = C.signatures_for(kind)
        assert set(loaded[name].signatures) == set(specs) | {C.DEFAULT_SIGNATURE}
        for signature, spec in specs.items():
            function = loaded[name].signatures[signature]
            inputs = function.structured_input_signature[1]
            for t in spec.inputs:
                assert inputs[t.key].dtype.name == t.dtype
                assert tuple(inputs[t.key].shape) == t.resolve(SMALL_IMAGE_SHAPE, LATENT, NUM_CLASSES)
            assert set(function.structured_outputs) == {t.key for t in spec.outputs}
        description = json.loads((exports[name] / C.ASSETS_EXTRA / C.CONTRACT_FILE).read_text())
        assert description[C.CONTRACT_KIND_FIELD] == kind
        assert description["default_signature"] == C.default_signature_for(kind)
        if kind in C.LABEL_KINDS:
            assert description[C.CLASS_NAMES_FIELD] == CLASS_NAMES
            assert description[C.NUM_CLASSES_FIELD] == NUM_CLASSES
        else:
            assert C.CLASS_NAMES_FIELD not in description
    assert C.CLASSIFY in loaded["m2"].signatures and C.CLASSIFY not in loaded["label"].signatures
    assert C.COMPLETE in loaded["half"].signatures and C.GENERATE not in loaded["half"].signatures


def test_class_names_must_name_every_class(tmp_path, models):
    with pytest.raises(ValueError, match=f"{NUM_CLASSES} classes"):
        export_model(models["label"], tmp_path, class_names=CLASS_NAMES[:2])
    assert not (tmp_path / C.MODEL_NAME).exists()


# === The signatures against the Keras models ===
def test_label_generate_decodes_seeded_normals_with_each_label(loaded, models):
    labels = np.int32([0, 1, 2, 3, 3])
    for name in ("label", "m2"):
        out = call(loaded[name], C.GENERATE, **{C.LABELS: labels}, **draw_inputs((7, 0), 0.5))
        expected = models[name].generate(labels, seed=tf.constant([7, 0], tf.int64), temperature=0.5)
        assert out[C.IMAGES].shape == (5, *SMALL_IMAGE_SHAPE)
        np.testing.assert_allclose(out[C.IMAGES], expected, atol=1e-5)
        z = tf.random.stateless_normal((5, LATENT), tf.constant([7, 0], tf.int64)) * 0.5
        np.testing.assert_allclose(out[C.Z], z, atol=1e-6)
        default = call(loaded[name], C.DEFAULT_SIGNATURE, **{C.LABELS: labels}, **draw_inputs((7, 0), 0.5))
        np.testing.assert_array_equal(default[C.IMAGES], out[C.IMAGES])


def test_label_cvae_encode_takes_labels_and_m2_encode_uses_its_classifier(loaded, models, small_images):
    labels = np.int32([0, 1, 2, 3, 0, 1])
    encoded = call(loaded["label"], C.ENCODE, **{C.IMAGES: small_images, C.LABELS: labels})
    z_mean, _ = models["label"].encode(small_images, labels)
    np.testing.assert_allclose(encoded[C.Z_MEAN], z_mean, atol=1e-5)
    m2 = models["m2"]
    probabilities = call(loaded["m2"], C.CLASSIFY, **{C.IMAGES: small_images})[C.PROBABILITIES]
    assert probabilities.shape == (6, NUM_CLASSES)
    np.testing.assert_allclose(probabilities, m2.classify(small_images), atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    encoded = call(loaded["m2"], C.ENCODE, **{C.IMAGES: small_images})
    z_mean, _ = m2.encode(small_images, np.argmax(probabilities, axis=1))  # y = argmax q(y|x)
    np.testing.assert_allclose(encoded[C.Z_MEAN], z_mean, atol=1e-5)


def test_scores_and_reconstructions_match_keras_for_each_kind(loaded, models, small_images):
    """log_likelihood is log p(x|y) for a label CVAE, the marginal log p(x) for M2 and
    log p(hidden | observed) for a half CVAE; M2 reconstructs with y = argmax q(y|x)."""
    images, labels = small_images[:2], np.int32([2, 1])
    seed = tf.constant(C.IWAE_SEED, tf.int64)
    for name, extra in [("label", {C.LABELS: labels}), ("m2", {}), ("half", {})]:
        model = models[name]
        scores = call(loaded[name], C.LOG_LIKELIHOOD, **{C.IMAGES: images}, **extra)[C.LOG_LIKELIHOOD_KEY]
        for i in range(2):
            keyword = {"labels": labels[i : i + 1]} if extra else {}
            expected = model.log_likelihood(images[i : i + 1], num_samples=C.IWAE_NUM_SAMPLES, seed=seed, **keyword)
            np.testing.assert_allclose(scores[i], np.asarray(expected)[0], rtol=1e-5)
        reconstructed = call(loaded[name], C.RECONSTRUCT, **{C.IMAGES: images}, **extra)[C.IMAGES]
        expected = model.reconstruct(images, labels) if extra else model.reconstruct(images)
        np.testing.assert_allclose(reconstructed, expected, atol=1e-5)


def test_half_complete_keeps_the_observed_half_and_ignores_the_hidden_one(loaded, models, small_images):
    other = small_images.copy()
    other[:, :, 4:] = 1.0 - other[:, :, 4:]  # another right (hidden) half
    first = call(loaded["half"], C.COMPLETE, **{C.IMAGES: small_images}, **draw_inputs((3, 4)))[C.IMAGES]
    again = call(loaded["half"], C.COMPLETE, **{C.IMAGES: other}, **draw_inputs((3, 4)))[C.IMAGES]
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[:, :, :4], small_images[:, :, :4])
    expected = models["half"].complete(small_images, seed=tf.constant([3, 4], tf.int64), temperature=1.0)
    np.testing.assert_allclose(first, expected, atol=1e-5)


def test_in_graph_label_checks_answer_invalid_argument(loaded, small_images):
    """TF Serving runs these checks in the graph (and answers INVALID_ARGUMENT)."""
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{C.LABELS} must be within \[0, {NUM_CLASSES}\)"):
        call(loaded["label"], C.GENERATE, **{C.LABELS: np.int32([0, NUM_CLASSES])}, **draw_inputs())
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"one of {C.LABELS} per row"):
        call(loaded["label"], C.ENCODE, **{C.IMAGES: small_images, C.LABELS: np.int32([0, 1])})


# === Over gRPC ===
def test_generate_with_labels_over_grpc_matches_in_process(clients, loaded):
    labels = [3, 0, 2, 2]
    images = clients["m2"].generate(labels=labels, seed=7)
    expected = call(loaded["m2"], C.GENERATE, **{C.LABELS: np.int32(labels)}, **draw_inputs((7, 0)))
    np.testing.assert_array_equal(images, expected[C.IMAGES])
    images, z = clients["label"].generate_with_latents(labels=labels, seed=(1, 2), temperature=0.5)
    expected = call(loaded["label"], C.GENERATE, **{C.LABELS: np.int32(labels)}, **draw_inputs((1, 2), 0.5))
    np.testing.assert_array_equal(images, expected[C.IMAGES])
    np.testing.assert_array_equal(z, expected[C.Z])


def test_m2_classify_over_grpc_matches_in_process_and_the_metadata_shows_k(clients, loaded, small_images):
    probabilities = clients["m2"].classify(small_images)
    expected = call(loaded["m2"], C.CLASSIFY, **{C.IMAGES: small_images})[C.PROBABILITIES]
    np.testing.assert_array_equal(probabilities, expected)
    assert clients["m2"].num_classes() == NUM_CLASSES and clients["label"].num_classes() is None
    inputs = clients["label"].metadata()["signatures"][C.GENERATE]["inputs"]
    assert inputs[C.LABELS] == {"dtype": "DT_INT32", "shape": [-1]}


def test_complete_over_grpc_matches_in_process(clients, loaded, small_images):
    completed = clients["half"].complete(small_images, seed=(3, 4))
    expected = call(loaded["half"], C.COMPLETE, **{C.IMAGES: small_images}, **draw_inputs((3, 4)))[C.IMAGES]
    np.testing.assert_array_equal(completed, expected)


def test_a_label_cvae_serves_its_row_signatures_with_labels(clients, loaded, small_images):
    labels = np.int32([1, 1, 0, 3, 2, 0])
    for method, name, key in [("encode", C.ENCODE, C.Z_MEAN), ("reconstruct", C.RECONSTRUCT, C.IMAGES),
                              ("log_likelihood", C.LOG_LIKELIHOOD, C.LOG_LIKELIHOOD_KEY)]:
        answer = getattr(clients["label"], method)(small_images, labels=labels)
        answer = answer[key] if isinstance(answer, dict) else answer
        expected = call(loaded["label"], name, **{C.IMAGES: small_images, C.LABELS: labels})[key]
        np.testing.assert_allclose(answer, expected, rtol=1e-6, atol=1e-6)


def invalid(call_it) -> str:
    with pytest.raises(ServingError) as err:
        call_it()
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
    return err.value.details


def test_bad_labels_and_label_counts_are_invalid_argument_over_grpc(clients, client, small_images):
    assert f"[0, {NUM_CLASSES})" in invalid(lambda: clients["m2"].generate(labels=[0, NUM_CLASSES], seed=1))
    assert f"[0, {NUM_CLASSES})" in invalid(lambda: clients["label"].generate(labels=[-1], seed=1))
    assert f"[0, {NUM_CLASSES})" in invalid(lambda: clients["m2"].decode(np.zeros((2, LATENT)), labels=[0, 9]))
    details = invalid(lambda: clients["label"].predict(
        C.ENCODE, {C.IMAGES: small_images[:3], C.LABELS: np.int32([0, 1])}))
    assert "one label per row" in details
    # A label model's generate takes labels, not num_samples; a plain VAE's takes no labels.
    details = invalid(lambda: clients["m2"].generate(4, seed=1))
    assert f"not found in signature: {C.NUM_SAMPLES}" in details and C.LABELS in details
    assert f"not found in signature: {C.LABELS}" in invalid(lambda: client.generate(labels=[0, 1], seed=1))
    assert clients["m2"].generate(labels=[1], seed=1).shape == (1, *SMALL_IMAGE_SHAPE)  # still answers


def test_a_signature_the_model_lacks_is_failed_precondition(clients, client, images, small_images):
    cases = [
        (lambda: client.classify(images), C.CLASSIFY),  # a plain VAE has no classifier
        (lambda: clients["label"].classify(small_images), C.CLASSIFY),
        (lambda: clients["half"].generate(labels=[0], seed=1), C.GENERATE),
        (lambda: clients["m2"].complete(small_images, seed=1), C.COMPLETE),
        (lambda: client.complete(images, seed=1), C.COMPLETE),
    ]
    for call_it, name in cases:
        with pytest.raises(ServingError) as err:
            call_it()
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION, err.value
        assert f'signature key "{name}" not found' in err.value.details


def test_a_batching_server_runs_label_generate_alone_and_batches_label_rows(exports, clients, small_images):
    options = BatchingOptions(max_batch_size=64, batch_timeout_micros=20_000)
    server = start_server(exports["label"].parent, model_name="label", poll_seconds=0, batching=options)
    try:
        with VAEClient(f"127.0.0.1:{server.port}", model_name="label", timeout=30) as batched:
            batched.wait_until_ready(30)
            requests = [([k % NUM_CLASSES] * (k + 1), k) for k in range(6)]
            with ThreadPoolExecutor(max_workers=len(requests)) as pool:
                drawn = list(pool.map(lambda a: batched.generate(labels=a[0], seed=a[1]), requests))
            for (labels, seed), images in zip(requests, drawn):
                np.testing.assert_array_equal(images, clients["label"].generate(labels=labels, seed=seed))
            assert server.scheduler.stats()[C.GENERATE] == (0, 0)  # never queued
            parts = [(small_images[:n], np.arange(n, dtype=np.int32) % NUM_CLASSES) for n in (1, 2, 6, 3, 5, 4)]
            with ThreadPoolExecutor(max_workers=len(parts)) as pool:
                encoded = list(pool.map(lambda p: batched.encode(p[0], labels=p[1]), parts))
            for (part, labels), codes in zip(parts, encoded):
                expected = clients["label"].encode(part, labels=labels)[C.Z_MEAN]
                np.testing.assert_allclose(codes[C.Z_MEAN], expected, atol=1e-6)
            assert server.scheduler.stats()[C.ENCODE][1] == len(parts)
    finally:
        server.stop(grace=1)


# === vae generate --labels / --per-class ===
def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vae")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def picture(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_vae_generate_per_class_draws_one_row_per_class(servers, clients, tmp_path):
    out = tmp_path / "classes.png"
    target = f"127.0.0.1:{servers['m2'].port}"
    assert run("generate", "--target", target, "--model-name", "m2", "--per-class", "3", "--seed", "5",
               "--out", str(out)) == 0
    labels = [k for k in range(NUM_CLASSES) for _ in range(3)]
    expected = image_grid(clients["m2"].generate(labels=labels, seed=5), columns=3)
    assert expected.shape[0] == NUM_CLASSES * (SMALL_IMAGE_SHAPE[0] + 2) + 2  # one row per class
    np.testing.assert_array_equal(picture(out), upscale(expected))


def test_vae_generate_labels_draws_one_image_per_label(servers, clients, tmp_path):
    out = tmp_path / "labels.png"
    target = f"127.0.0.1:{servers['label'].port}"
    assert run("generate", "--target", target, "--model-name", "label", "--labels", "2,0,1", "--seed", "1",
               "--out", str(out)) == 0
    expected = image_grid(clients["label"].generate(labels=[2, 0, 1], seed=1))
    np.testing.assert_array_equal(picture(out), upscale(expected))
    # A label CVAE's signatures do not show K: --per-class needs --num-classes.
    with pytest.raises(ConfigError, match="--num-classes"):
        run("generate", "--target", target, "--model-name", "label", "--per-class", "2", "--out", str(out))
    assert run("generate", "--target", target, "--model-name", "label", "--per-class", "2", "--num-classes",
               str(NUM_CLASSES), "--seed", "1", "--out", str(out)) == 0
    assert picture(out).shape == upscale(image_grid(np.zeros((2 * NUM_CLASSES, *SMALL_IMAGE_SHAPE)), 2)).shape


@pytest.mark.parametrize("flags, fragment", [
    (["--labels", "0,x"], "integers separated by commas"),
    (["--labels=-1"], "class numbers >= 0"),
    (["--labels", "1", "-n", "3"], "give one of"),
    (["--labels", "1", "--per-class", "2"], "give one of"),
    (["--per-class", "0"], "--per-class must be >= 1"),
    (["--num-classes", "3"], "--num-classes goes with --per-class"),
])
def test_label_flags_of_vae_generate_are_user_errors(tmp_path, flags, fragment):
    with pytest.raises(ConfigError, match=fragment):
        run("generate", *flags, "--out", str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()
