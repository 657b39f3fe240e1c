"""Shared pieces of the `vae encode` tests: a tiny real export, inputs on disk, outputs read back."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from PIL import Image

from pipelines import cli

TINY = dict(image_shape=(28, 28, 1), latent_dim=4, hidden_units=(32,))


def export_tiny_vae(base_dir, version: int | None = 1, seed: int = 0, name: str = "vae"):
    """A small real VAE exported with the project's exporter -> (version folder, the Keras model)."""
    from model import VAE, ModelConfig
    from serving.export import export_model

    vae = VAE(ModelConfig(**TINY), seed=seed)
    vae(np.zeros((1, 28, 28, 1), "float32"))
    return export_model(vae, base_dir, name, version), vae


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """(version folder, Keras VAE) of one tiny export, shared by the session."""
    return export_tiny_vae(tmp_path_factory.mktemp("exports"))


def fashion_images(tfds_dir, split: str = "test", count: int | None = None):
    """(uint8 (N, 28, 28, 1), int64 labels) of a Fashion-MNIST split, in the split's order."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("fashion_mnist", data_dir=tfds_dir)
    ds = builder.as_dataset(split=split if count is None else f"{split}[:{count}]", shuffle_files=False,
                            batch_size=-1)
    examples = tfds.as_numpy(ds)
    return examples["image"], examples["label"]


def export_encode(export_dir, images: np.ndarray, batch: int = 1000) -> dict[str, np.ndarray]:
    """The export's own `encode` signature on float32 images, called here in-process."""
    encode = tf.saved_model.load(str(export_dir)).signatures["encode"]
    parts = [encode(images=tf.constant(images[i:i + batch])) for i in range(0, len(images), batch)]
    return {key: np.concatenate([p[key].numpy() for p in parts]) for key in parts[0]}


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pngs(folder: Path, images: np.ndarray, names: list[str] | None = None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"img_{i:03d}.png" for i in range(len(images))]
    for name, image in zip(names, images):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes(image))
    return names


def manifest(out) -> dict:
    return json.loads((Path(out) / "_manifest.json").read_text())


def read_rows(out) -> pa.Table:
    """All Parquet rows in `out` (finished shards only), sorted by input index."""
    files = sorted(Path(out).glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return table.sort_by("index")


def column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist())


def run(argv: list[str]) -> int:
    """`vae encode ARGV` in this process (the parser `register` builds); its exit code."""
    return cli.main(["encode", "--no-progress", *[str(a) for a in argv]])
