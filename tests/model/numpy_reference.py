"""Independent NumPy versions of the MLP networks and the objective's terms, computed from
a model's weights, for checking the Keras models' numbers."""

from __future__ import annotations

import numpy as np


def relu(x):
    return np.maximum(x, 0.0)


def dense(layer, h, activation=None):
    out = h @ np.asarray(layer.kernel) + np.asarray(layer.bias)
    return relu(out) if activation == "relu" else out


def mlp_encoder(encoder, x, c=None):
    """(mu, log_var) of an MLPEncoder: [flatten(x), c] -> relu layers -> two heads."""
    h = x.reshape(len(x), -1)
    if c is not None:
        h = np.concatenate([h, c], axis=-1)
    for layer in encoder.hidden:
        h = dense(layer, h, "relu")
    return dense(encoder.mean_head, h), dense(encoder.log_var_head, h)


def mlp_decoder(decoder, z, c=None):
    """The logits of an MLPDecoder: [z, c] -> relu layers -> one per pixel, (B, H, W, C)."""
    h = z if c is None else np.concatenate([z, c], axis=-1)
    for layer in decoder.hidden:
        h = dense(layer, h, "relu")
    return dense(decoder.out, h).reshape(len(z), *decoder.image_shape)


def mlp_classifier(classifier, x):
    """The logits of an MLPClassifier: flatten -> relu layers -> one per class."""
    h = x.reshape(len(x), -1)
    for layer in classifier.hidden:
        h = dense(layer, h, "relu")
    return dense(classifier.logits, h)


def bernoulli_nll(x, logits):
    """-sum log Bernoulli(x | sigmoid(logits)) per example, written the textbook way."""
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    per_pixel = -(x * np.log(p) + (1.0 - x) * np.log1p(-p))
    return per_pixel.reshape(len(x), -1).sum(axis=-1)


def kl_to_standard_normal(mu, log_var):
    """KL(N(mu, exp(log_var)) || N(0, I)) per example."""
    return -0.5 * np.sum(1.0 + log_var - mu**2 - np.exp(log_var), axis=-1)


def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def one_hot(labels, classes):
    out = np.zeros((len(labels), classes), np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out
