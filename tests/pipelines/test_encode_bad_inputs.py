"""Bad inputs stop `vae encode` with the input named, or are skipped and listed with --skip-bad."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from serving import contract as C
from tests.pipelines.encode_fixtures import (
    column, export_encode, fashion_images, manifest, png_bytes, read_rows, run, tiny_export, write_pngs,
)

__all__ = ["tiny_export"]  # a fixture


@pytest.fixture(scope="module")
def images(tfds_dir):
    return fashion_images(tfds_dir, "test", 8)[0]


def test_corrupt_png_stops_the_run_or_is_skipped_and_recorded(tiny_export, images, tmp_path, capsys):
    export_dir, _ = tiny_export
    write_pngs(tmp_path / "in", images[:6])
    (tmp_path / "in" / "img_002.png").write_bytes(png_bytes(images[2])[:60])  # truncated
    out = tmp_path / "out"
    args = ["--model", export_dir, "--images", tmp_path / "in", "--out", out, "--rows-per-shard", 2]
    assert run(args) == 2
    error = capsys.readouterr().err
    assert "bad input img_002.png: cannot decode the image" in error and "--skip-bad" in error
    assert not (out / "_manifest.json").exists()
    assert [p.name for p in sorted(out.glob("part-*"))] == ["part-00000-of-00003.parquet"]  # the shard before

    assert run(args + ["--skip-bad"]) == 0  # resumes: shard 0 is kept, the bad file is recorded
    m = manifest(out)
    assert m["runner"]["resumed_shards"] == 1
    assert (m["rows"], m["num_skipped"]) == (5, 1)
    assert m["skipped"][0]["id"] == "img_002.png" and "cannot decode" in m["skipped"][0]["reason"]
    assert "img_002.png" not in read_rows(out).column("id").to_pylist()


def test_wrong_shape_needs_resize(tiny_export, images, tmp_path, capsys):
    export_dir, _ = tiny_export
    folder = tmp_path / "in"
    write_pngs(folder, images[:2])
    big = np.asarray(Image.fromarray(images[2, ..., 0]).resize((32, 40)))
    Image.fromarray(np.stack([big] * 3, -1)).save(folder / "rgb_big.png")  # 40x32x3
    args = ["--model", export_dir, "--images", folder, "--out", tmp_path / "out"]
    assert run(args) == 2
    error = capsys.readouterr().err
    assert "bad input rgb_big.png: image is 40x32x3, the model expects 28x28x1" in error
    assert "--resize" in error

    assert run(args + ["--resize", "--overwrite"]) == 0
    table = read_rows(tmp_path / "out")
    assert table.num_rows == 3 and table.column("id").to_pylist()[2] == "rgb_big.png"
    grey = tf.image.resize(np.stack([big] * 3, -1)[None].astype(np.float32) / 255, (28, 28), antialias=True)
    grey = tf.image.rgb_to_grayscale(grey).numpy()
    expected = export_encode(export_dir, grey)[C.Z_MEAN][0]
    np.testing.assert_allclose(column(table, C.Z_MEAN)[2], expected, atol=1e-3)


@pytest.mark.parametrize("value, reason", [(np.nan, "NaN or infinite"), (1.5, "outside [0, 1]")])
def test_bad_values_in_npy(tiny_export, images, tmp_path, capsys, value, reason):
    export_dir, _ = tiny_export
    floats = images.astype(np.float32) / 255
    floats[3, 5, 5, 0] = value
    np.save(tmp_path / "x.npy", floats)
    args = ["--model", export_dir, "--npy", tmp_path / "x.npy", "--out", tmp_path / "out"]
    assert run(args) == 2
    error = capsys.readouterr().err
    assert "bad input x.npy:3: " in error and reason in error
    assert run(args + ["--skip-bad"]) == 0
    m = manifest(tmp_path / "out")
    assert (m["rows"], m["num_skipped"]) == (7, 1)
    assert m["skipped"][0]["id"] == "x.npy:3" and reason in m["skipped"][0]["reason"]
    kept = [i for i in range(8) if i != 3]
    np.testing.assert_allclose(column(read_rows(tmp_path / "out"), C.Z_MEAN),
                               export_encode(export_dir, floats[kept])[C.Z_MEAN], atol=1e-6)


def test_nan_message_names_the_row(tiny_export, images, tmp_path, capsys):
    export_dir, _ = tiny_export
    floats = images.astype(np.float32) / 255
    floats[6] = np.nan
    np.save(tmp_path / "x.npy", floats)
    assert run(["--model", export_dir, "--npy", tmp_path / "x.npy", "--out", tmp_path / "out"]) == 2
    assert "bad input x.npy:6: NaN or infinite pixel values" in capsys.readouterr().err


def test_npy_of_another_shape_is_refused_without_resize(tiny_export, tmp_path, capsys):
    export_dir, _ = tiny_export
    np.save(tmp_path / "big.npy", np.zeros((4, 32, 32), np.uint8))
    args = ["--model", export_dir, "--npy", tmp_path / "big.npy", "--out", tmp_path / "out"]
    assert run(args) == 2
    error = capsys.readouterr().err
    assert "big.npy holds 32x32x1 images, the model expects 28x28x1; pass --resize" in error
    assert run(args + ["--resize"]) == 0 and manifest(tmp_path / "out")["rows"] == 4


def test_tfrecord_bad_records_and_corrupt_file(tiny_export, images, tmp_path, capsys):
    export_dir, _ = tiny_export

    def example(features):
        return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()

    good = tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(images[0])]))
    short = tf.train.Feature(float_list=tf.train.FloatList(value=[0.5] * 10))
    with tf.io.TFRecordWriter(str(tmp_path / "a.tfrecord")) as writer:
        writer.write(example({"image": good}))
        writer.write(example({"other": good}))
        writer.write(example({"image": short}))
        writer.write(b"not an example")
    args = ["--model", export_dir, "--tfrecord", tmp_path / "a.tfrecord", "--out", tmp_path / "out"]
    assert run(args) == 2
    assert "bad input a.tfrecord:1: no feature 'image'" in capsys.readouterr().err
    assert run(args + ["--skip-bad"]) == 0
    reasons = {s["id"]: s["reason"] for s in manifest(tmp_path / "out")["skipped"]}
    assert set(reasons) == {"a.tfrecord:1", "a.tfrecord:2", "a.tfrecord:3"}
    assert "holds 10 values, expected 28x28x1 = 784" in reasons["a.tfrecord:2"]
    assert "not a serialized tf.train.Example" in reasons["a.tfrecord:3"]

    data = (tmp_path / "a.tfrecord").read_bytes()
    first = 16 + int.from_bytes(data[:8], "little")  # length, its CRC, the record, its CRC
    (tmp_path / "cut.tfrecord").write_bytes(data[: first + 20])  # cut inside the second record
    args = ["--model", export_dir, "--tfrecord", tmp_path / "cut.tfrecord", "--out", tmp_path / "out2"]
    assert run(args) == 2
    assert "bad input cut.tfrecord:1: corrupt TFRecord data" in capsys.readouterr().err
    assert run(args + ["--skip-bad"]) == 0
    m = manifest(tmp_path / "out2")
    assert m["rows"] == 1 and m["skipped"][0]["id"] == "cut.tfrecord:1"


@pytest.mark.slow
def test_beam_runner_stops_on_or_records_bad_inputs(tiny_export, images, tmp_path, capsys):
    export_dir, _ = tiny_export
    floats = images.astype(np.float32) / 255
    floats[[2, 5]] = np.nan
    np.save(tmp_path / "x.npy", floats)
    args = ["--model", export_dir, "--npy", tmp_path / "x.npy", "--out", tmp_path / "out", "--runner", "beam",
            "--rows-per-shard", 4]
    assert run(args) == 2
    assert "bad input x.npy:2: NaN or infinite pixel values" in capsys.readouterr().err
    assert run(args + ["--skip-bad"]) == 0
    m = manifest(tmp_path / "out")
    assert (m["rows"], [s["id"] for s in m["skipped"]]) == (6, ["x.npy:2", "x.npy:5"])
    assert read_rows(tmp_path / "out").column("id").to_pylist() == [f"x.npy:{i}" for i in (0, 1, 3, 4, 6, 7)]
