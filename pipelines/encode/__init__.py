"""Offline batch encoding: every input image to its latent code, from an exported model.

    from pipelines.encode import EncodeConfig, encode
    from pipelines.sources import SourceSpec
    manifest = encode(EncodeConfig(model="exports/vae", out="codes/test",
                                   source=SourceSpec(kind="tfds", dataset="fashion_mnist", split="test")))

The export's `encode` (and `log_likelihood`, `reconstruct`) signatures are loaded and
called; nothing here imports `model/` or Keras. Modules: `config` (the job), `signatures`
and `loading` (the export), `output` (shards, state, manifest), `local` and `beam` (the
two runners), `job` (the entry point), `cli` (the `vae encode` flags). The inputs are
read by `pipelines.sources`, the source layer `vae train` and `vae tune` share.

Loaded lazily (PEP 562), so that the `vae` parser does not load TensorFlow.
"""

from core.lazy import lazy_attributes

_WHERE = {
    "EncodeConfig": "pipelines.encode.config",
    "EncodeError": "pipelines.encode.config",
    "encode": "pipelines.encode.job",
}

__all__ = sorted(_WHERE)

__getattr__ = lazy_attributes(__name__, _WHERE)
