"""Shared fixtures for the serving tests: one tiny VAE, one export and one server per session.

Everything is real: a Keras VAE, a SavedModel on disk, a gRPC server on 127.0.0.1 with a
free port. Test files are named test_serving_*.py (this folder has no __init__.py, so that
it never shadows the `serving` package).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serving_testlib, in any import mode
from serving_testlib import IMAGE_SHAPE, METRICS, RUN_CONFIG, build_vae, start_server  # noqa: E402


@pytest.fixture(scope="session")
def vae():
    return build_vae(0)


@pytest.fixture(scope="session")
def images():
    return np.random.default_rng(0).random((8, *IMAGE_SHAPE), dtype=np.float32)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, vae) -> Path:
    """Version 1 of model `vae` under a fresh base folder."""
    from serving.export import export_model

    base = tmp_path_factory.mktemp("exports")
    return export_model(vae, base, run_config=RUN_CONFIG, metrics=METRICS)


@pytest.fixture(scope="session")
def loaded(export_dir):
    """The export loaded in-process (the reference the server must match)."""
    import tensorflow as tf

    return tf.saved_model.load(str(export_dir))


@pytest.fixture(scope="session")
def server(export_dir):
    server = start_server(export_dir.parent, poll_seconds=0)
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="session")
def client(server):
    from serving.client import VAEClient

    with VAEClient(f"127.0.0.1:{server.port}", timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def batching_server(export_dir):
    from serving.batching import BatchingOptions

    options = BatchingOptions(max_batch_size=64, batch_timeout_micros=20_000)
    server = start_server(export_dir.parent, poll_seconds=0, batching=options)
    yield server
    server.stop(grace=1)
