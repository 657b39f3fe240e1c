"""A test-only model kind, `capacity_vae`: proof that a kind is one file plus its entry in
the registry (`model.kinds.register`, done by `registered()`), with nothing else in the
project changed for it.

The capacity-controlled beta-VAE (Burgess et al., 2018, "Understanding disentangling in
beta-VAE") trains on the reconstruction plus `GAMMA * |KL - CAPACITY|`, a different
objective term: the KL is pulled towards a target capacity of `CAPACITY` nats instead of
towards 0. It reports that term as `capacity_gap`. Its evaluation (ELBO, IWAE) is the
VAE's: the objective changed, the model did not.
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops

from model.kinds import REGISTRY, Kind, register
from model.vae import VAE

NAME = "capacity_vae"
GAMMA = 2.0
CAPACITY = 5.0  # nats


@keras.saving.register_keras_serializable(package="tests")
class CapacityVAE(VAE):
    """A VAE trained on reconstruction + beta KL (the VAE's `add_loss`) + GAMMA |KL - C|."""

    LOSS_TERMS = (*VAE.LOSS_TERMS, "capacity_gap")

    def terms_of(self, batch, outputs) -> dict:
        terms = super().terms_of(batch, outputs)
        gap = ops.abs(terms["kl"] - CAPACITY)  # (B,)
        return {**terms, "loss": terms["loss"] + GAMMA * gap, "capacity_gap": gap}


KIND = Kind(summary="a capacity-controlled beta-VAE (test only)", classes={1: CapacityVAE})


@contextlib.contextmanager
def registered():
    """The kind in the registry while the block runs (a test leaves the registry, and so
    the `vae` parser's choices, as it found them)."""
    register(NAME, KIND)
    try:
        yield
    finally:
        REGISTRY.pop(NAME)
