"""M1+M2 (`model.m1m2.M1M2`): M2's objective on codes drawn from a frozen M1, generation
through both decoders, the nested IWAE bound and the first-stage checks, each against an
independent NumPy computation where there is one."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import ConfigError, ModelConfig, build_model
from model.config import M1M2Config, M2Config
from model.m1m2 import M1M2
from tests.model import numpy_reference as ref

K, D1, D2 = 4, 3, 2
ALPHA = 2.5
SMALL = dict(kind="m1m2", image_shape=(8, 8, 1), latent_dim=D1, hidden_units=(16,), num_classes=K,
             m2=M2Config(alpha=ALPHA), m1m2=M1M2Config(latent_dim=D2, hidden_units=(8,)))


def batch(n=10, seed=0):
    """Binary images; labels 0..3 on even examples, -1 (unlabelled) on odd ones."""
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 8, 8, 1)) < 0.5).astype("float32")
    labels = np.where(np.arange(n) % 2 == 0, np.arange(n) % K, -1).astype("int64")
    return images, labels


def stacked(**extra):
    """A built M1+M2 whose M1 is a separately built (random) first-stage VAE."""
    model = build_model(ModelConfig(**{**SMALL, **extra}), seed=0)
    model.build()
    m1 = build_model(M1M2.first_stage_config(model.model_config), seed=1)
    m1.build()
    model.load_first_stage(m1)
    return model, m1


def gaussian_nll(x, mean, log_scale):
    """-sum log N(x | mean, exp(log_scale)^2) per example."""
    per = 0.5 * ((x - mean) / math.exp(log_scale)) ** 2 + log_scale + 0.5 * math.log(2 * math.pi)
    return per.reshape(len(x), -1).sum(axis=-1)


def numpy_m2_on_codes(m2, codes, labels, z2):
    """The per-example M2 objective on M1's codes (KL included), class by class: labelled
    L(z1, y) + alpha * CE, unlabelled sum_y q(y|z1) L(z1, y) - H, with a Gaussian p(z1|z2, y)."""
    n = len(codes)
    log_scale = float(np.maximum(m2.likelihood.log_scale.numpy(), -6.0))
    per_class = np.zeros((n, K))
    for k in range(K):
        c = ref.one_hot(np.full(n, k), K)
        mu, log_var = ref.mlp_encoder(m2.encoder, codes, c)
        mean = ref.mlp_decoder(m2.decoder, z2[k], c)
        per_class[:, k] = gaussian_nll(codes, mean, log_scale) + ref.kl_to_standard_normal(mu, log_var) + math.log(K)
    log_q = ref.log_softmax(ref.mlp_classifier(m2.classifier, codes).astype(np.float64))
    q = np.exp(log_q)
    return np.array([per_class[i, labels[i]] - ALPHA * log_q[i, labels[i]] if labels[i] >= 0
                     else np.sum(q[i] * per_class[i]) + np.sum(q[i] * log_q[i]) for i in range(n)])


def test_the_objective_is_m2s_on_the_codes_drawn_from_m1_in_numpy():
    model, _ = stacked()
    images, labels = batch()
    outputs = model((images, labels), training=False, seed=tf.constant([7, 1], tf.int64))
    terms = model.terms_of((images, labels), outputs)
    codes = np.asarray(outputs["z1"]).reshape(len(images), 1, 1, D1)
    z2 = np.asarray(outputs["z"]).reshape(K, len(images), -1)  # row k * B + b: code b, class k
    expected = numpy_m2_on_codes(model.m2, codes, labels, z2)
    np.testing.assert_allclose(terms["loss"] + terms["kl"], expected, rtol=1e-4)
    np.testing.assert_allclose(float(sum(model.losses)), np.mean(terms["kl"]), rtol=1e-5)


def test_the_codes_are_fresh_draws_from_m1s_posterior():
    model, m1 = stacked()
    images = np.repeat(batch(n=1)[0], 400, axis=0)  # one image, 400 draws of its code
    z1 = np.asarray(model((images, -np.ones(400, "int64")))["z1"])
    mu, log_var = ref.mlp_encoder(m1.encoder, images[:1])  # M1's posterior, from M1's own weights
    eps = (z1 - mu) / np.exp(0.5 * log_var)
    assert np.all(np.abs(eps.mean(axis=0)) < 0.2) and np.all(np.abs(eps.std(axis=0) - 1) < 0.15)


def test_training_moves_m2_and_leaves_m1_as_it_was_trained():
    model, m1 = stacked()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    images, labels = batch()
    before = [w.numpy() for w in model.m2.weights]
    model.fit({"image": images, "label": labels}, batch_size=10, epochs=3, verbose=0)
    for mine, theirs in ((model.encoder, m1.encoder), (model.decoder, m1.decoder)):
        for w, expected in zip(mine.weights, theirs.weights):
            np.testing.assert_array_equal(w.numpy(), expected.numpy())
    assert any(not np.allclose(w.numpy(), b) for w, b in zip(model.m2.weights, before))


def test_generate_decodes_m2s_mean_code_with_m1_in_numpy():
    model, m1 = stacked()
    labels = np.array([0, 1, 2, 3, 1])
    images = np.asarray(model.generate(labels, seed=5))
    z2 = np.asarray(model.prior_draw(5, tf.constant([5, 0], tf.int64)))
    z1 = ref.mlp_decoder(model.m2.decoder, z2, ref.one_hot(labels, K)).reshape(5, D1)  # Gaussian mean
    expected = 1 / (1 + np.exp(-ref.mlp_decoder(m1.decoder, z1)))
    np.testing.assert_allclose(images, expected, atol=1e-5)


def test_classify_and_encode_read_m1s_mean_code():
    model, m1 = stacked()
    images, _ = batch()
    mu, _ = ref.mlp_encoder(m1.encoder, images)
    logits = ref.mlp_classifier(model.m2.classifier, mu.reshape(-1, 1, 1, D1))
    np.testing.assert_allclose(model.classify(images), np.exp(ref.log_softmax(logits)), atol=1e-5)
    predicted = np.argmax(logits, axis=-1)
    z2_mean, _ = ref.mlp_encoder(model.m2.encoder, mu, ref.one_hot(predicted, K))
    np.testing.assert_allclose(model.encode(images)[0], z2_mean, atol=1e-5)


def test_the_nested_iwae_bound_tightens_with_k_and_sits_above_the_elbo():
    model, _ = stacked()
    images, _ = batch(n=6)
    nelbo = np.mean([np.asarray(model.negative_elbo(images, seed=s)) for s in range(20)], axis=0)
    one = np.mean([np.asarray(model.log_likelihood(images, 1, seed=s)) for s in range(20)], axis=0)
    many = np.asarray(model.log_likelihood(images, 500, seed=0))
    assert np.all(many > one) and np.all(many > -nelbo)
    labels = np.array([0, 1, 2, 3, 0, 1])
    given = np.asarray(model.log_likelihood(images, 500, seed=0, labels=labels))
    assert np.all(given < many + math.log(K) + 0.5)  # log p(x|y) <= log p(x) - log p(y), up to noise


def test_a_first_stage_of_other_networks_is_refused_naming_the_field_and_its_prior_is_free():
    model = build_model(ModelConfig(**SMALL), seed=0)
    model.build()
    # A default vae (VampPrior, KL weight null) of the same networks is an M1: it is copied.
    vamp = build_model(ModelConfig(image_shape=(8, 8, 1), latent_dim=D1, hidden_units=(16,)), seed=1)
    vamp.build()
    assert vamp.model_config.density.prior != "gaussian"
    model.load_first_stage(vamp)
    np.testing.assert_array_equal(model.encoder.weights[0].numpy(), vamp.encoder.weights[0].numpy())
    other = build_model(ModelConfig(image_shape=(8, 8, 1), latent_dim=5, hidden_units=(16,)), seed=0)
    other.build()
    # Only the latent size is named: the prior is not a difference.
    with pytest.raises(ConfigError, match=r"M1: model.latent_dim=5 \(this M1\+M2: 3\); train M1"):
        model.load_first_stage(other)


def test_a_saved_m1m2_reloads_and_serves_the_same_numbers(tmp_path):
    model, _ = stacked()
    images, _ = batch()
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert type(loaded) is M1M2
    np.testing.assert_array_equal(loaded.classify(images), model.classify(images))
    np.testing.assert_array_equal(loaded.generate([0, 3], seed=1), model.generate([0, 3], seed=1))


def test_an_m1m2_refuses_a_classifier_of_images():
    with pytest.raises(ConfigError, match="ModelConfig.m2.classifier must be 'mlp' or null"):
        build_model(ModelConfig(**{**SMALL, "m2": M2Config(alpha=1.0, classifier="conv")}), seed=0)


def moved(images, dy, dx):
    """The images moved dy rows down and dx columns right, the empty pixels 0."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_with_a_shift_the_classifier_learns_from_codes_of_shifted_images_and_only_while_training():
    model, m1 = stacked(m2=M2Config(alpha=ALPHA, classifier_shift=1))
    images, labels = batch()
    seed = tf.constant([7, 1], tf.int64)
    logits = np.asarray(model((images, labels), training=True, seed=seed)["logits"])
    # The classifier's draw: z1 = mu + sigma * eps, eps from the call's seed folded with 3.
    zeros = tf.zeros((len(images), D1))
    eps = np.asarray(model.sampling([zeros, zeros], seed=tf.random.experimental.stateless_fold_in(seed, 3)))
    candidates = []  # (9, B, K): each image's logits under each whole-pixel move of at most 1
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            mu, log_var = ref.mlp_encoder(m1.encoder, moved(images, dy, dx))
            codes = (mu + np.exp(0.5 * log_var) * eps).reshape(-1, 1, 1, D1)
            candidates.append(ref.mlp_classifier(model.m2.classifier, codes))
    matches = np.all(np.abs(np.stack(candidates) - logits[None]) < 1e-4, axis=-1)  # (9, B)
    assert matches.any(axis=0).all()  # every image's logits are those of one move of it
    assert not matches[4].all()  # and not all of them unmoved (index 4: dy = dx = 0)
    # In evaluation the classifier sees the code of each image as it is.
    outputs = model((images, labels), training=False, seed=seed)
    expected = ref.mlp_classifier(model.m2.classifier, np.asarray(outputs["z1"]).reshape(-1, 1, 1, D1))
    np.testing.assert_allclose(outputs["logits"], expected, atol=1e-4)


def test_the_m1m2_section_is_refused_for_other_kinds():
    with pytest.raises(ConfigError, match="ModelConfig.m1m2.latent_dim is only used by model.kind='m1m2'"):
        ModelConfig(kind="m2", m1m2=M1M2Config(latent_dim=8))
