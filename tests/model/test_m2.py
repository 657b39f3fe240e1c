"""M2: labelled and unlabelled terms against an explicit NumPy sum over classes, the
marginal likelihood, the classifier's gradients, and save/load."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import M2, ConfigError, ModelConfig
from model.config import M2Config
from model.classifiers import ConvClassifier, MLPClassifier
from tests.helpers import assert_config_round_trip, assert_save_load_round_trip
from tests.model import numpy_reference as ref

K = 4
SMALL = dict(kind="m2", image_shape=(8, 8, 1), latent_dim=3, hidden_units=(32, 16), conv_filters=(4, 8),
             num_classes=K)
ALPHA = 2.5


def batch(n=10, seed=0):
    """Binary images; labels 0..3 on even examples, -1 (unlabelled) on odd ones."""
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 8, 8, 1)) < 0.5).astype("float32")
    labels = np.where(np.arange(n) % 2 == 0, np.arange(n) % K, -1).astype("int64")
    return images, labels


def m2(architecture="mlp", **options):
    """A built M2 of SMALL with `options` in its `m2` section (alpha ALPHA unless given)."""
    model = M2(ModelConfig(architecture=architecture, **SMALL, m2=M2Config(**{"alpha": ALPHA, **options})), seed=0)
    model.build()
    return model


def numpy_m2_objective(model, images, labels, z):
    """The per-example M2 objective (the whole of it, KL included), class by class in a
    Python loop: labelled L(x, y) + alpha * CE, unlabelled sum_y q(y|x) L(x, y) - H."""
    n = len(images)
    per_class = np.zeros((n, K))
    for k in range(K):
        c = ref.one_hot(np.full(n, k), K)
        mu, log_var = ref.mlp_encoder(model.encoder, images, c)
        reconstruction = ref.bernoulli_nll(images, ref.mlp_decoder(model.decoder, z[k], c))
        per_class[:, k] = reconstruction + ref.kl_to_standard_normal(mu, log_var) + math.log(K)
    log_q = ref.log_softmax(ref.mlp_classifier(model.classifier, images).astype(np.float64))
    q = np.exp(log_q)
    expected = np.zeros(n)
    for i in range(n):
        if labels[i] >= 0:
            expected[i] = per_class[i, labels[i]] - ALPHA * log_q[i, labels[i]]
        else:
            expected[i] = sum(q[i, k] * per_class[i, k] for k in range(K)) + np.sum(q[i] * log_q[i])
    return expected


def test_the_objective_equals_the_explicit_numpy_sum_over_classes():
    model = m2()
    images, labels = batch()
    outputs = model((images, labels), seed=tf.constant([7, 1], tf.int64))
    terms = model.terms_of((images, labels), outputs)
    z = np.asarray(outputs["z"]).reshape(K, len(images), -1)  # row k * B + b: image b, class k
    expected = numpy_m2_objective(model, images, labels, z)
    # The per-example loss plus its KL (which add_loss carries, as a batch mean) is the objective.
    np.testing.assert_allclose(terms["loss"] + terms["kl"], expected, rtol=1e-4)
    np.testing.assert_allclose(float(model.losses[0]), np.mean(terms["kl"]), rtol=1e-5)
    assert np.all(terms["labelled"] == (labels >= 0))
    assert np.all(np.asarray(terms["classification"])[labels < 0] == 0)


def test_an_all_unlabelled_batch_trains_the_classifier_through_the_marginalisation():
    model = m2()
    images, _ = batch()
    with tf.GradientTape() as tape:
        terms = model.loss_terms((images, -np.ones(len(images), "int64")), training=True)
        objective = tf.reduce_mean(terms["loss"]) + tf.add_n(model.losses)
    gradients = tape.gradient(objective, model.classifier.trainable_variables)
    assert all(g is not None and float(tf.norm(g)) > 0 for g in gradients)
    assert float(tf.reduce_sum(terms["classification"])) == 0.0


def test_the_marginal_likelihood_sums_the_conditional_ones_over_classes():
    model = m2()
    images, _ = batch(6)
    # Every image with every class, in the rows M2 uses (class-major), so that the
    # conditional estimates below take the same posterior draws as the marginal one.
    tiled, classes = np.tile(images, (K, 1, 1, 1)), np.repeat(np.arange(K), 6)
    # (The draws are keyed by chunk: the marginal splits its chunk over the K classes.)
    conditional = np.asarray(model.log_likelihood(tiled, 7, seed=3, chunk_size=7, labels=classes))
    conditional = conditional.reshape(K, 6).T  # (B, K)
    expected = np.log(np.exp(conditional.astype(np.float64)).sum(axis=1)) - math.log(K)
    marginal = model.log_likelihood(images, num_samples=7, seed=3, chunk_size=7 * K)
    np.testing.assert_allclose(marginal, expected, rtol=1e-5)
    # The marginal negative ELBO: sum_y q(y|x) (nelbo_y + log K) - H(q).
    nelbo = np.asarray(model.negative_elbo(tiled, seed=3, labels=classes)).reshape(K, 6).T
    q = np.asarray(model.classify(images), np.float64)
    expected_nelbo = np.sum(q * (nelbo + math.log(K) + np.log(q)), axis=1)
    np.testing.assert_allclose(model.negative_elbo(images, seed=3), expected_nelbo, rtol=1e-5)


def test_evaluation_terms_report_the_marginal_nll_and_the_accuracy():
    model = m2()
    images, _ = batch(8)
    labels = np.array(tf.argmax(model.classify(images), axis=-1))
    labels[:2] = (labels[:2] + 1) % K  # two wrong labels
    terms = model.evaluation_terms(images, labels, num_samples=5, seed=0)
    assert {"nelbo", "iwae_nll", "kl_per_unit", "marginal_nelbo", "marginal_iwae_nll", "accuracy"} == set(terms)
    np.testing.assert_array_equal(terms["accuracy"], [0, 0, 1, 1, 1, 1, 1, 1])
    assert terms["kl_per_unit"].shape == (8, 3)


def test_kl_per_unit_of_unlabelled_images_is_the_expectation_over_q():
    model = m2()
    images, _ = batch(5)
    q = np.asarray(model.classify(images))
    per_class = np.stack([np.asarray(model.kl_per_unit(images, labels=np.full(5, k))) for k in range(K)], 1)
    np.testing.assert_allclose(model.kl_per_unit(images, labels=-np.ones(5, "int64")),
                               np.einsum("bk,bkd->bd", q, per_class), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("architecture, classifier, shift", [
    ("mlp", None, 0), ("conv", None, 0), ("mlp", "conv", 0), ("mlp", "conv", 1)])
def test_save_load_round_trip(architecture, classifier, shift, tmp_path):
    model = m2(architecture, classifier=classifier, classifier_shift=shift)
    images, labels = batch(6)
    path = tmp_path / "m2.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is M2 and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.classify(images), model.classify(images))
    np.testing.assert_array_equal(loaded.negative_elbo(images, seed=4), model.negative_elbo(images, seed=4))
    np.testing.assert_array_equal(loaded.generate([0, 3], seed=1), model.generate([0, 3], seed=1))


@pytest.mark.parametrize("make", [lambda: MLPClassifier(4, (16,)), lambda: ConvClassifier(4, (4, 8), (16,))])
def test_classifier_layers_round_trip(make, tmp_path):
    assert_config_round_trip(make())
    assert_save_load_round_trip(make(), np.zeros((2, 8, 8, 1), "float32"), tmp_path)


def test_an_m2_needs_its_alpha():
    with pytest.raises(ConfigError, match="ModelConfig.m2.alpha"):
        M2(ModelConfig(**SMALL))


@pytest.mark.parametrize("architecture, classifier, expected", [
    ("mlp", None, MLPClassifier), ("conv", None, ConvClassifier),
    ("mlp", "conv", ConvClassifier), ("conv", "mlp", MLPClassifier)])
def test_the_classifier_network_follows_model_classifier_else_the_architecture(architecture, classifier, expected):
    model = m2(architecture, classifier=classifier)
    assert type(model.classifier) is expected
    images, labels = batch()
    with tf.GradientTape() as tape:
        terms = model.loss_terms((images, labels), training=True)
        objective = tf.reduce_mean(terms["loss"]) + tf.add_n(model.losses)
    gradients = tape.gradient(objective, model.classifier.trainable_variables)
    assert gradients and all(g is not None and float(tf.norm(g)) > 0 for g in gradients)


def test_model_classifier_is_refused_for_other_kinds_and_unknown_networks():
    with pytest.raises(ConfigError, match="ModelConfig.m2.classifier.*only used by model.kind='m2'"):
        ModelConfig(kind="cvae", m2=M2Config(classifier="conv"))
    with pytest.raises(ConfigError, match="ModelConfig.m2.classifier"):
        ModelConfig(**SMALL, m2=M2Config(classifier="resnet"))


def shifted(image, dy: int, dx: int):
    """`image` (H, W, C) moved down dy and right dx pixels, zeros where nothing moved in."""
    out = np.zeros_like(image)
    height, width = image.shape[:2]
    out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        image[max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


def test_classifier_shift_moves_training_images_by_whole_pixels_within_the_bound_and_never_at_evaluation():
    model = m2("mlp", classifier="conv", classifier_shift=1)
    images, _ = batch(20)
    moved = np.asarray(model.classifier_shift(images, training=True))
    moves = set()
    for image, original in zip(moved, images):
        found = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                 if np.array_equal(image, shifted(original, dy, dx))]
        assert found, "a training image is not its original moved by at most one pixel each way"
        moves.update(found)
    assert len(moves) > 1
    np.testing.assert_array_equal(model.classifier_shift(images, training=False), images)


@pytest.mark.parametrize("shift", [0, 1])
def test_the_classification_term_sees_fresh_shifts_while_training_only_with_classifier_shift(shift):
    model = m2("mlp", classifier="conv", classifier_shift=shift)
    images, labels = batch(20)
    seed = tf.constant([3, 1], tf.int64)  # the same posterior draws on every call

    def classification(training):
        return np.asarray(model.loss_terms((images, labels), training=training, seed=seed)["classification"])

    np.testing.assert_array_equal(classification(False), classification(False))
    first, second = classification(True), classification(True)
    assert np.array_equal(first, second) == (shift == 0)


def test_classifier_shift_is_refused_for_other_kinds_and_out_of_range():
    with pytest.raises(ConfigError, match="ModelConfig.m2.classifier_shift.*only used by model.kind='m2'"):
        ModelConfig(kind="cvae", m2=M2Config(classifier_shift=2))
    with pytest.raises(ConfigError, match="ModelConfig.m2.classifier_shift.*>= 0"):
        ModelConfig(**SMALL, m2=M2Config(classifier_shift=-1))
    with pytest.raises(ConfigError, match="ModelConfig.m2.classifier_shift.*less than half"):
        ModelConfig(**SMALL, m2=M2Config(classifier_shift=4))
