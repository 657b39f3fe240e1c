"""`vae encode` of an M2 export: its rows also get the classifier's `probabilities` and
`predicted_label`; an export whose `encode` needs labels is refused with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pipelines.encode import EncodeError
from pipelines.encode.signatures import PREDICTED_LABEL, describe_export
from serving import contract as C
from tests.pipelines.encode_fixtures import column, manifest, read_rows, run

SMALL = dict(image_shape=(8, 8, 1), latent_dim=3, hidden_units=(16,), num_classes=4)


def export_small(base_dir, kind: str):
    """A small real M2 (kind "m2") or label CVAE (kind "cvae") exported with the project's exporter."""
    import keras

    from model import ModelConfig, build_model
    from model.config import M2Config
    from serving.export import export_model

    keras.utils.set_random_seed(0)
    extra = {"m2": M2Config(alpha=1.0)} if kind == "m2" else {}
    model = build_model(ModelConfig(kind=kind, **SMALL, **extra), seed=0)
    model.build()
    return export_model(model, base_dir, kind)


@pytest.fixture(scope="module")
def m2_export(tmp_path_factory):
    return export_small(tmp_path_factory.mktemp("exports"), "m2")


def test_an_m2_export_adds_probabilities_and_predicted_label_columns(m2_export, tmp_path):
    images = np.random.default_rng(0).random((30, 8, 8, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "out"
    assert run(["--model", m2_export, "--npy", tmp_path / "x.npy", "--out", out, "--rows-per-shard", 16,
                "--batch-size", 8]) == 0
    table = read_rows(out)
    signatures = tf.saved_model.load(str(m2_export)).signatures
    expected = signatures[C.CLASSIFY](**{C.IMAGES: tf.constant(images)})[C.PROBABILITIES].numpy()
    probabilities = column(table, C.PROBABILITIES)
    assert probabilities.shape == (30, 4)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(column(table, PREDICTED_LABEL), np.argmax(expected, axis=1))
    encoded = signatures[C.ENCODE](**{C.IMAGES: tf.constant(images)})[C.Z_MEAN].numpy()
    np.testing.assert_allclose(column(table, C.Z_MEAN), encoded, rtol=1e-6, atol=1e-6)
    described = manifest(out)
    assert described["model"]["num_classes"] == 4
    assert [c["name"] for c in described["columns"]][-2:] == [C.PROBABILITIES, PREDICTED_LABEL]


def test_an_export_whose_encode_needs_labels_is_refused(tmp_path):
    export_dir = export_small(tmp_path, "cvae")
    with pytest.raises(EncodeError, match="not images alone"):
        describe_export(str(export_dir))
