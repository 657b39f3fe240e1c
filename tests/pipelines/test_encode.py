"""`vae encode` on real data with a real export: values, ids, inputs kinds, formats, runners."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

import pipelines.encode as encode_package
from pipelines.encode import EncodeConfig, encode
from pipelines.encode.signatures import describe_export
from pipelines.sources import SourceSpec
from serving import contract as C
from tests.pipelines.encode_fixtures import (
    column, export_encode, export_tiny_vae, fashion_images, manifest, read_rows, run, tiny_export,
    write_pngs,
)

__all__ = ["tiny_export"]  # a fixture


@pytest.fixture(scope="module")
def test_split(tfds_dir, tiny_export, tmp_path_factory):
    """The whole Fashion-MNIST test split encoded by the local runner (4 shards)."""
    out = tmp_path_factory.mktemp("codes") / "test"
    export_dir, _ = tiny_export
    assert run(["--model", export_dir.parent, "--dataset", "fashion_mnist", "--split", "test",
                "--data-dir", tfds_dir, "--rows-per-shard", 3000, "--out", out]) == 0
    return out


@pytest.mark.slow
def test_test_split_gives_one_row_per_image_equal_to_the_exports_encode(test_split, tfds_dir, tiny_export):
    export_dir, vae = tiny_export
    table = read_rows(test_split)
    ids = table.column("id").to_pylist()
    assert table.num_rows == 10_000 and len(set(ids)) == 10_000
    assert ids[:2] == ["test:0", "test:1"]
    np.testing.assert_array_equal(column(table, "index"), np.arange(10_000))

    images, labels = fashion_images(tfds_dir, "test")
    pixels = images.astype(np.float32) / 255.0
    expected = export_encode(export_dir, pixels)
    np.testing.assert_allclose(column(table, C.Z_MEAN), expected[C.Z_MEAN], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(column(table, C.Z_LOG_VAR), expected[C.Z_LOG_VAR], rtol=1e-6, atol=1e-6)
    z_mean, _ = vae.encode(pixels)  # and the Keras model it was exported from
    np.testing.assert_allclose(column(table, C.Z_MEAN), np.asarray(z_mean), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(column(table, "label"), labels)


@pytest.mark.slow
def test_manifest_describes_the_output(test_split, tiny_export):
    export_dir, _ = tiny_export
    m = manifest(test_split)
    assert m["model"]["path"] == str(export_dir) and m["model"]["version"] == 1
    assert m["model"]["name"] == "vae" and m["model"]["latent_dim"] == 4
    assert m["input"]["kind"] == "tfds" and m["input"]["split"] == "test"
    assert (m["num_inputs"], m["rows"], m["num_skipped"], m["skipped"]) == (10_000, 10_000, 0, [])
    assert [s["rows"] for s in m["shards"]] == [3000, 3000, 3000, 1000]
    for shard in m["shards"]:
        data = (test_split / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
        assert pq.read_metadata(test_split / shard["file"]).num_rows == shard["rows"]
    assert sorted(p.name for p in test_split.iterdir()) == ["_manifest.json"] + [s["file"] for s in m["shards"]]
    schema = pq.read_schema(test_split / m["shards"][0]["file"])
    assert schema.field(C.Z_MEAN).type.list_size == 4 and schema.field("id").type == "string"


def test_the_output_folder_reads_as_one_parquet_dataset(tiny_export, tfds_dir, tmp_path):
    """The manifest and the job's state are named so that Parquet readers skip them."""
    export_dir, _ = tiny_export
    images, _ = fashion_images(tfds_dir, "test", 25)
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "out"
    assert run(["--model", export_dir, "--npy", tmp_path / "x.npy", "--out", out, "--rows-per-shard", 10]) == 0
    (out / ".encode-state").mkdir()  # as while a job runs: hidden, skipped too
    (out / ".encode-state" / "job.json").write_text("{}")
    expected = export_encode(export_dir, images.astype(np.float32) / 255)
    for table in (pq.read_table(out), pq.ParquetDataset(out).read()):
        assert table.num_rows == 25
        np.testing.assert_array_equal(column(table, "index"), np.arange(25))  # shards in order
        np.testing.assert_allclose(column(table, C.Z_MEAN), expected[C.Z_MEAN], rtol=1e-6, atol=1e-6)
    import pandas  # a dev dependency
    frame = pandas.read_parquet(out)
    assert len(frame) == 25 and frame["id"].tolist() == [f"x.npy:{i}" for i in range(25)]


@pytest.mark.slow
def test_beam_runner_matches_the_local_runner(test_split, tfds_dir, tiny_export, tmp_path):
    export_dir, _ = tiny_export
    out = tmp_path / "beam"
    assert run(["--model", export_dir, "--dataset", "fashion_mnist", "--split", "test", "--data-dir", tfds_dir,
                "--rows-per-shard", 3000, "--out", out, "--runner", "beam"]) == 0
    local, beam = read_rows(test_split), read_rows(out)
    assert beam.column("id").to_pylist() == local.column("id").to_pylist()
    for name in ("label", C.Z_MEAN, C.Z_LOG_VAR):
        np.testing.assert_array_equal(column(beam, name), column(local, name))
    assert beam.schema.remove_metadata() == local.schema.remove_metadata()
    m = manifest(out)
    assert m["runner"]["name"] == "beam" and m["rows"] == 10_000 and len(m["shards"]) == 4
    assert sum(s["rows"] for s in m["shards"]) == 10_000


@pytest.mark.slow
def test_npy_input_with_extra_columns(tiny_export, tfds_dir, tmp_path):
    export_dir, _ = tiny_export
    images, _ = fashion_images(tfds_dir, "test", 40)
    floats = images[..., 0].astype(np.float32) / 255  # (N, H, W) floats in [0, 1]
    np.save(tmp_path / "a.npy", images[:25])  # uint8 (N, H, W, 1)
    np.save(tmp_path / "b.npy", floats[25:])
    out = tmp_path / "out"
    assert run(["--model", export_dir, "--npy", tmp_path / "a.npy", tmp_path / "b.npy", "--out", out,
                "--log-likelihood", "--reconstruction-error", "--rows-per-shard", 16, "--batch-size", 10]) == 0
    table = read_rows(out)
    assert table.column("id").to_pylist()[24:26] == ["a.npy:24", "b.npy:0"]
    assert table.column("label").null_count == 40
    pixels = images.astype(np.float32) / 255
    loaded = tf.saved_model.load(str(export_dir))
    expected = export_encode(export_dir, pixels)
    np.testing.assert_allclose(column(table, C.Z_MEAN), expected[C.Z_MEAN], rtol=1e-6, atol=1e-6)
    scores = loaded.signatures[C.LOG_LIKELIHOOD](images=tf.constant(pixels))[C.LOG_LIKELIHOOD_KEY].numpy()
    np.testing.assert_allclose(column(table, C.LOG_LIKELIHOOD_KEY), scores, rtol=1e-5, atol=1e-4)
    recon = loaded.signatures[C.RECONSTRUCT](images=tf.constant(pixels))[C.IMAGES].numpy()
    np.testing.assert_allclose(column(table, "reconstruction_error"), ((recon - pixels) ** 2).mean(axis=(1, 2, 3)),
                               rtol=1e-5, atol=1e-7)
    assert [s["rows"] for s in manifest(out)["shards"]] == [16, 16, 8]


def test_image_folder_and_tfrecord_output(tiny_export, tfds_dir, tmp_path):
    export_dir, _ = tiny_export
    images, _ = fashion_images(tfds_dir, "test", 12)
    names = write_pngs(tmp_path / "pngs", images[:6], [f"b/{i}.png" for i in range(3)] + [f"a/{i}.PNG" for i in range(3)])
    from PIL import Image

    for i in range(6, 12):  # JPEG is lossy: compare with what the file decodes to
        Image.fromarray(images[i, ..., 0]).save(tmp_path / "pngs" / f"c{i}.jpg", quality=95)
    out = tmp_path / "out"
    assert run(["--model", export_dir, "--images", tmp_path / "pngs", "--out", out, "--format", "tfrecord"]) == 0
    m = manifest(out)
    assert m["format"] == "tfrecord" and m["rows"] == 12 and m["shards"][0]["file"].endswith(".tfrecord")
    spec = {"id": tf.io.FixedLenFeature([], tf.string), C.Z_MEAN: tf.io.FixedLenFeature([4], tf.float32)}
    rows = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(str(out / m["shards"][0]["file"]))]
    ids = [r["id"].numpy().decode() for r in rows]
    assert ids == sorted(names + [f"c{i}.jpg" for i in range(6, 12)])  # sorted relative paths
    decoded = np.stack([np.asarray(Image.open(tmp_path / "pngs" / n))[..., None] for n in ids])
    expected = export_encode(export_dir, decoded.astype(np.float32) / 255)
    np.testing.assert_allclose(np.stack([r[C.Z_MEAN].numpy() for r in rows]), expected[C.Z_MEAN], atol=1e-6)


def test_tfrecord_input_with_encoded_raw_and_float_images(tiny_export, tfds_dir, tmp_path):
    export_dir, _ = tiny_export
    images, labels = fashion_images(tfds_dir, "test", 9)
    from tests.pipelines.encode_fixtures import png_bytes

    def example(i):
        if i % 3 == 0:
            image = tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(images[i])]))
        elif i % 3 == 1:
            image = tf.train.Feature(bytes_list=tf.train.BytesList(value=[images[i].tobytes()]))
        else:
            image = tf.train.Feature(float_list=tf.train.FloatList(value=(images[i] / 255).reshape(-1)))
        features = {"pixels": image, "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[labels[i]])),
                    "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"item-{i}".encode()]))}
        return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()

    for part, rows in (("p0", range(0, 5)), ("p1", range(5, 9))):
        with tf.io.TFRecordWriter(str(tmp_path / f"{part}.tfrecord")) as writer:
            for i in rows:
                writer.write(example(i))
    out = tmp_path / "out"
    assert run(["--model", export_dir, "--tfrecord", tmp_path / "p*.tfrecord", "--image-feature", "pixels",
                "--label-feature", "y", "--id-feature", "key", "--out", out]) == 0
    table = read_rows(out)
    assert table.column("id").to_pylist() == [f"item-{i}" for i in range(9)]
    np.testing.assert_array_equal(column(table, "label"), labels)
    expected = export_encode(export_dir, images.astype(np.float32) / 255)
    np.testing.assert_allclose(column(table, C.Z_MEAN), expected[C.Z_MEAN], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_model_folder_means_its_latest_version(tmp_path, tfds_dir):
    first, _ = export_tiny_vae(tmp_path / "exports", version=1, seed=1)
    latest, _ = export_tiny_vae(tmp_path / "exports", version=2, seed=2)
    info = describe_export(str(first.parent))
    assert (info.version, info.path, info.image_shape, info.latent_dim) == (2, str(latest), (28, 28, 1), 4)
    images, _ = fashion_images(tfds_dir, "test", 5)
    np.save(tmp_path / "x.npy", images)
    m = encode(EncodeConfig(model=str(first.parent), out=str(tmp_path / "out"),
                            source=SourceSpec(kind="npy", paths=(str(tmp_path / "x.npy"),)), progress=False))
    assert m["model"]["version"] == 2
    np.testing.assert_allclose(column(read_rows(tmp_path / "out"), C.Z_MEAN),
                               export_encode(latest, images.astype(np.float32) / 255)[C.Z_MEAN], atol=1e-6)


@pytest.mark.slow
def test_the_encoder_never_imports_the_model_package(tiny_export, tfds_dir, tmp_path):
    export_dir, _ = tiny_export
    images, _ = fashion_images(tfds_dir, "test", 5)
    np.save(tmp_path / "x.npy", images)
    code = (
        "import sys; from pipelines.cli import main\n"
        f"assert main(['encode', '--model', {str(export_dir)!r}, '--npy', {str(tmp_path / 'x.npy')!r}, "
        f"'--out', {str(tmp_path / 'out')!r}, '--no-progress']) == 0\n"
        # The one `vae` parser reads `model.config` (a dataclass) and the registry of kinds
        # (`model.kinds`, its classes named by import path) for `vae train`'s choices; no
        # model code (layers, networks, the model classes) is loaded.
        "assert not [m for m in sys.modules if m.startswith('model.') and m not in ('model.config', 'model.kinds')]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "encoded 5 of 5 inputs" in done.stdout
    # `import tensorflow` loads Keras itself; the encoder just never uses it.
    package = Path(encode_package.__file__).parent
    for source in package.glob("*.py"):
        text = source.read_text()
        assert "import keras" not in text and "from keras" not in text and "from model" not in text, source


@pytest.mark.slow
def test_beam_tfrecord_output_matches_the_local_runners(tiny_export, tfds_dir, tmp_path):
    export_dir, _ = tiny_export
    images, _ = fashion_images(tfds_dir, "test", 30)
    np.save(tmp_path / "x.npy", images)
    spec = {"id": tf.io.FixedLenFeature([], tf.string), C.Z_MEAN: tf.io.FixedLenFeature([4], tf.float32),
            "reconstruction_error": tf.io.FixedLenFeature([], tf.float32)}
    rows = {}
    for runner in ("local", "beam"):
        out = tmp_path / runner
        assert run(["--model", export_dir, "--npy", tmp_path / "x.npy", "--out", out, "--format", "tfrecord",
                    "--reconstruction-error", "--rows-per-shard", 12, "--runner", runner]) == 0
        assert [s["file"] for s in manifest(out)["shards"]] == [f"part-0000{k}-of-00003.tfrecord" for k in range(3)]
        parsed = [tf.io.parse_single_example(r, spec) for f in sorted(out.glob("part-*.tfrecord"))
                  for r in tf.data.TFRecordDataset(str(f))]
        rows[runner] = {p["id"].numpy().decode(): (p[C.Z_MEAN].numpy(), p["reconstruction_error"].numpy())
                        for p in parsed}
    assert sorted(rows["beam"]) == sorted(rows["local"]) == sorted(f"x.npy:{i}" for i in range(30))
    for key, (z_mean, error) in rows["local"].items():
        np.testing.assert_array_equal(rows["beam"][key][0], z_mean)
        assert rows["beam"][key][1] == error
