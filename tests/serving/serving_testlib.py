"""Helpers for the serving tests (a uniquely named module: this folder is not a package)."""

from __future__ import annotations

import socket
import time

import numpy as np

IMAGE_SHAPE = (28, 28, 1)
LATENT_DIM = 4
RUN_CONFIG = {"model": {"latent_dim": LATENT_DIM}, "data": {"dataset": "fashion_mnist"}, "train": {"epochs": 1}}
METRICS = {"test_nelbo": 123.4, "test_iwae_nll": 120.1}


def build_vae(seed: int = 0):
    """A tiny, built VAE with the N(0, I) prior, whose `generate` the tests recompute as
    decoded seeded normals (random weights; `seed` changes them). The VampPrior's export
    is checked in tests/model/test_vampprior.py."""
    import keras

    from model import VAE, ModelConfig
    from model.config import DensityConfig

    keras.utils.set_random_seed(seed)
    vae = VAE(ModelConfig(image_shape=IMAGE_SHAPE, latent_dim=LATENT_DIM, hidden_units=(32,),
                          density=DensityConfig(prior="gaussian")), seed=seed)
    vae(np.zeros((1, *IMAGE_SHAPE), "float32"))
    return vae


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05):
    """Polls `condition()` until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


def start_server(base_path, **options):
    from serving.server import ModelServer, ServerOptions

    server = ModelServer(ServerOptions(model_base_path=str(base_path), port=0, **options))
    server.start()
    return server


def export_strict_encoder(vae, version_dir):
    """A SavedModel whose `encode` signature is the VAE's, behind an in-graph check that
    refuses images above 1 (INVALID_ARGUMENT): a request the server accepts and the model
    then fails, as a batch member that must fail alone."""
    import keras
    import tensorflow as tf

    from serving import contract as C

    def encode(inputs):
        images = inputs[C.IMAGES]
        tf.debugging.assert_less_equal(images, 1.0, message="images must be within [0, 1]")
        z_mean, z_log_var = vae.encode(images)
        return {C.Z_MEAN: tf.cast(z_mean, tf.float32), C.Z_LOG_VAR: tf.cast(z_log_var, tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(vae)
    spec = {C.IMAGES: tf.TensorSpec((None, *IMAGE_SHAPE), tf.float32, name=C.IMAGES)}
    archive.add_endpoint(C.ENCODE, encode, input_signature=[spec])
    archive.write_out(str(version_dir), verbose=False)
    return version_dir


# === Conditional models (small: 8x8 images, 4 classes) ===
SMALL_IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 4
CLASS_NAMES = ["tee", "trouser", "pullover", "dress"]


def build_conditional(kind: str = "cvae", condition: str = "label", seed: int = 0):
    """A tiny, built CVAE (on labels or a half) or M2 (random weights; `seed` changes them)."""
    import keras

    from model import ModelConfig, build_model
    from model.config import M2Config

    keras.utils.set_random_seed(seed)
    extra = {"m2": M2Config(alpha=1.0)} if kind == "m2" else {"condition": condition}
    config = ModelConfig(kind=kind, image_shape=SMALL_IMAGE_SHAPE, latent_dim=3, hidden_units=(16,),
                         num_classes=NUM_CLASSES, **extra)
    model = build_model(config, seed=seed)
    model.build()
    return model
