"""Shared fixtures: one offline-prepared Fashion-MNIST for the whole session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A tfds data directory with `fashion_mnist` prepared from the Debian package.

    Also exported as TFDS_DATA_DIR, so subprocesses (the CLI, the README command) use it.
    """
    from pipelines.sources.datasets import prepared_builder

    path = os.environ.get("VAE_TEST_TFDS_DIR") or str(tmp_path_factory.mktemp("tfds"))
    prepared_builder("fashion_mnist", path)
    os.environ["TFDS_DATA_DIR"] = path
    return path
