"""The batch encoder's signatures-only loader against `tf.saved_model.load` on real exports."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipelines.encode.loading import load_signatures
from pipelines.encode.signatures import Encoder, read_meta_graph
from serving import contract as C
from tests.pipelines.encode_fixtures import fashion_images, tiny_export

__all__ = ["tiny_export"]  # a fixture

NEEDED = [C.ENCODE, C.LOG_LIKELIHOOD, C.RECONSTRUCT]


def test_signatures_load_alone_and_answer_as_the_whole_savedmodel_does(tiny_export, tfds_dir):
    export_dir, _ = tiny_export
    images, _ = fashion_images(tfds_dir, "test", 300)
    pixels = tf.constant(images.astype(np.float32) / 255)
    alone = load_signatures(str(export_dir), NEEDED, read_meta_graph(str(export_dir)))
    assert alone is not None and sorted(alone) == sorted(NEEDED)
    gc.collect()  # the restored variables must outlive the loader's locals
    full = tf.saved_model.load(str(export_dir)).signatures
    for name in NEEDED:  # log_likelihood also captures a constant (its fixed IWAE seed)
        expected = full[name](images=pixels)
        got = alone[name](images=pixels)
        assert sorted(got) == sorted(expected), name
        for key in expected:
            np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=f"{name}/{key}")


def test_the_encoder_loads_only_what_it_calls_and_reports_it(tiny_export, tfds_dir):
    export_dir, _ = tiny_export
    images, _ = fashion_images(tfds_dir, "test", 50)
    encoder = Encoder(str(export_dir), log_likelihood=True)
    assert encoder.loader == "signatures only"
    full = tf.saved_model.load(str(export_dir)).signatures
    pixels = images.astype(np.float32) / 255
    out = encoder(pixels)
    np.testing.assert_array_equal(out[C.Z_MEAN], full[C.ENCODE](images=tf.constant(pixels))[C.Z_MEAN].numpy())
    np.testing.assert_array_equal(out[C.LOG_LIKELIHOOD_KEY],
                                  full[C.LOG_LIKELIHOOD](images=tf.constant(pixels))[C.LOG_LIKELIHOOD_KEY].numpy())


class _TableCapture(tf.Module):
    """An `encode` whose function captures a lookup table (a resource the fast loader does
    not restore)."""

    def __init__(self):
        super().__init__()
        self.weights = tf.Variable(tf.linspace(-1.0, 1.0, 28 * 28 * 3)[:, None] * tf.ones((1, 3)))
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant([0, 1], tf.int64), tf.constant([0.5, 2.0])), 1.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name=C.IMAGES)])
    def encode(self, images):
        flat = tf.reshape(images, (-1, 28 * 28))
        z = tf.matmul(flat, self.weights[:28 * 28]) * self.table.lookup(tf.constant(1, tf.int64))
        return {C.Z_MEAN: z, C.Z_LOG_VAR: -z}


def test_an_export_it_does_not_read_falls_back_to_the_full_loader(tmp_path, tfds_dir):
    module = _TableCapture()
    path = tmp_path / "7"
    tf.saved_model.save(module, str(path), signatures={C.ENCODE: module.encode})
    assert load_signatures(str(path), [C.ENCODE], read_meta_graph(str(path))) is None
    encoder = Encoder(str(path))
    assert encoder.loader == "tf.saved_model.load" and encoder.info.version == 7
    images, _ = fashion_images(tfds_dir, "test", 20)
    pixels = images.astype(np.float32) / 255
    np.testing.assert_allclose(encoder(pixels)[C.Z_MEAN], module.encode(tf.constant(pixels))[C.Z_MEAN].numpy(),
                               rtol=1e-6)


_EXPORT_IN_A_FRESH_PROCESS = """
import sys
import numpy as np
from model import VAE, ModelConfig
from serving.export import export_model
config = ModelConfig(image_shape=(28, 28, 1), latent_dim=4, hidden_units=(32,), activation=sys.argv[2])
vae = VAE(config, seed=0)
vae(np.zeros((1, 28, 28, 1), "float32"))
export_model(vae, sys.argv[1], "vae", 1)
"""


def test_exports_whose_function_names_collide_each_run_their_own(tmp_path, tfds_dir):
    """Two processes exporting alike name their functions alike (`__inference_encode_1085`),
    here with different bodies (relu, tanh): one process loading both must not run one
    export's functions for the other."""
    folders = []
    for activation in ("relu", "tanh"):
        subprocess.run([sys.executable, "-c", _EXPORT_IN_A_FRESH_PROCESS, str(tmp_path / activation), activation],
                       check=True, cwd=Path(__file__).resolve().parents[2], capture_output=True)
        folders.append(str(tmp_path / activation / "vae" / "1"))
    names = [{f.signature.name for f in read_meta_graph(p).graph_def.library.function} for p in folders]
    assert names[0] & names[1], "no shared function names: this TensorFlow names functions differently"
    images, _ = fashion_images(tfds_dir, "test", 30)
    pixels = images.astype(np.float32) / 255
    encoders = [Encoder(p) for p in folders]
    for folder, encoder in zip(folders, encoders):
        assert encoder.loader == "signatures only"
        expected = tf.saved_model.load(folder).signatures[C.ENCODE](images=tf.constant(pixels))
        np.testing.assert_array_equal(encoder(pixels)[C.Z_MEAN], expected[C.Z_MEAN].numpy())
