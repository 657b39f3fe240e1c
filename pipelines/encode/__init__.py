"""Offline batch encoding: every input image to its latent code, from an exported model.

    from pipelines.encode import EncodeConfig, encode
    manifest = encode(EncodeConfig(model="exports/vae", out="codes/test", input_kind="tfds",
                                   dataset="fashion_mnist", split="test"))

The export is loaded with `tf.saved_model.load` and called through its `encode` (and
`log_likelihood`, `reconstruct`) signatures; nothing here imports `model/` or Keras.
Modules: `config` (the job), `signatures` (the export), `sources`, `datasets` and `tfrecords` (the
inputs), `images` (decoding and checks), `output` (shards, state, manifest), `local` and
`beam` (the two runners), `job` (the entry point).
"""

from pipelines.encode.config import EncodeConfig, EncodeError
from pipelines.encode.job import encode

__all__ = ["EncodeConfig", "EncodeError", "encode"]
