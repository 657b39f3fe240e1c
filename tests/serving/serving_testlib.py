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
    """A tiny, built VAE (random weights; `seed` changes them)."""
    import keras

    from model import VAE, ModelConfig

    keras.utils.set_random_seed(seed)
    vae = VAE(ModelConfig(image_shape=IMAGE_SHAPE, latent_dim=LATENT_DIM, hidden_units=(32,)), seed=seed)
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
