"""`vae train`, `vae tune`'s data and `vae encode` on the user's own files: a folder of PNGs
with class subfolders, .npy arrays with a labels file, TFRecords with a label feature.

Everything is real: files written here, tiny models trained for a few steps, exports
served by the local gRPC server on 127.0.0.1, encodings read back from Parquet.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from PIL import Image

from pipelines import cli
from pipelines.config import RunConfig
from pipelines.distribute import make_cluster
from pipelines.own_data import draw_splits, open_own_data
from pipelines.sources import SourceError
from pipelines.train import fit, load_datasets, train
from pipelines.workdir import SOURCE_FILE, WorkdirError, prepare
from serving import contract as C
from serving.client import VAEClient
from serving.server import ModelServer, ServerOptions

HEIGHT, WIDTH = 20, 24  # not 28x28
CLASSES = ("circles", "squares")
PER_CLASS = 20
TINY = ["--latent-dim", "2", "--batch-size", "8", "--epochs", "1", "model.hidden_units=[32]",
        "train.steps_per_epoch=3", "train.iwae_k=4", "train.eval_batch_size=16", "train.tensorboard=false"]


def shape_image(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A (HEIGHT, WIDTH, 3) uint8 picture: a coloured disk or square on a dark ground."""
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    cy, cx, r = rng.integers(6, HEIGHT - 6), rng.integers(6, WIDTH - 6), rng.integers(3, 6)
    inside = (y - cy) ** 2 + (x - cx) ** 2 <= r * r if kind == "circles" else (
        (abs(y - cy) <= r) & (abs(x - cx) <= r))
    colour = rng.integers(128, 256, size=3)
    image = np.full((HEIGHT, WIDTH, 3), 20, np.uint8)
    image[inside] = colour
    return image


def write_folder(root, rng, per_class=PER_CLASS):
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(shape_image(kind, rng)).save(root / kind / f"{i:03d}.png")
    return root


def own_config(*assignments) -> RunConfig:
    config = RunConfig()
    for assignment in ("model.latent_dim=2", "model.hidden_units=[32]", "train.batch_size=8",
                       "train.epochs=1", "train.steps_per_epoch=3", "train.iwae_k=4",
                       "train.eval_batch_size=16", "train.tensorboard=false", *assignments):
        config = config.override(assignment)
    return config


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("own") / "photos", np.random.default_rng(0))


@pytest.fixture(scope="module")
def photo_run(photos, tmp_path_factory):
    """`vae train` of an M2 model on the folder, through the command line."""
    workdir = tmp_path_factory.mktemp("photo_run")
    code = cli.main(["train", "--workdir", str(workdir), "--images", str(photos), "--kind", "m2", *TINY])
    assert code == 0
    return workdir


@pytest.fixture(scope="module")
def photo_server(photo_run):
    server = ModelServer(ServerOptions(model_base_path=str(photo_run / "exports" / "vae"), port=0,
                                       model_name="vae", poll_seconds=0))
    server.start()
    client = VAEClient(f"127.0.0.1:{server.port}", model_name="vae", timeout=30)
    client.wait_until_ready(30)
    yield client
    client.close()
    server.stop(grace=1)


# === A folder of RGB PNGs in two class subfolders ===
def test_training_on_a_folder_keeps_its_shape_classes_and_splits(photo_run):
    config = json.loads((photo_run / "config.json").read_text())
    assert config["model"]["image_shape"] == [HEIGHT, WIDTH, 3]
    assert config["model"]["num_classes"] == 2
    assert config["data"]["class_names"] == list(CLASSES)
    assert len(config["data"]["fingerprint"]) == 64
    metrics = json.loads((photo_run / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 3 and np.isfinite(metrics["test_nelbo"])
    assert "test_accuracy" in metrics
    record = json.loads((photo_run / SOURCE_FILE).read_text())
    assert record["num_inputs"] == 2 * PER_CLASS and record["in_memory"]
    assert len(record["files"]) == 2 * PER_CLASS
    assert all(v["bytes"] > 0 and len(v["sha256"]) == 64 for v in record["files"].values())
    splits = [set(record["splits"][s]) for s in ("train", "validation", "test")]
    assert sum(map(len, splits)) == 2 * PER_CLASS and not (splits[0] & splits[2]) and not (splits[1] & splits[2])
    assert (len(splits[1]), len(splits[2])) == (4, 4)  # 10% each
    for name in ("samples.png", "reconstructions.png", "classes.png"):
        with Image.open(photo_run / name) as picture:
            assert picture.mode == "RGB" and np.asarray(picture).std() > 0


def test_the_export_carries_the_folder_class_names(photo_run):
    contract = json.loads((photo_run / "exports" / "vae" / "1" / "assets.extra" / C.CONTRACT_FILE).read_text())
    assert contract[C.CLASS_NAMES_FIELD] == list(CLASSES)


def test_the_served_model_generates_and_encodes_at_the_folder_shape(photo_server, photos):
    generated = photo_server.generate(seed=3, labels=[0, 1])
    assert generated.shape == (2, HEIGHT, WIDTH, 3)
    with Image.open(photos / "squares" / "000.png") as picture:
        image = np.asarray(picture, np.float32)[None] / 255.0
    codes = photo_server.encode(image)
    assert codes["z_mean"].shape == (1, 2)
    assert photo_server.classify(image).shape == (1, 2)


def test_vae_encode_reads_the_folder_labels_with_the_trained_export(photo_run, photos, tmp_path):
    export = photo_run / "exports" / "vae" / "1"
    assert cli.main(["encode", "--model", str(export), "--images", str(photos), "--out", str(tmp_path / "codes"),
                     "--no-progress"]) == 0
    table = pq.read_table(tmp_path / "codes").to_pandas().sort_values("id")
    assert len(table) == 2 * PER_CLASS
    expected = [CLASSES.index(i.split("/")[0]) for i in table["id"]]
    assert table["label"].tolist() == expected
    assert np.stack(table["z_mean"].to_numpy()).shape == (2 * PER_CLASS, 2)


# === .npy with a labels file ===
def test_a_cvae_trains_on_npy_with_a_labels_file(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(40, 12, 16), dtype=np.uint8)  # grey, 12x16
    labels = np.arange(40) % 3
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    workdir = tmp_path / "run"
    code = cli.main(["train", "--workdir", str(workdir), "--npy", str(tmp_path / "x.npy"), "--labels-file",
                     str(tmp_path / "y.npy"), "--kind", "cvae", "--likelihood", "gaussian", *TINY])
    assert code == 0
    config = RunConfig.load(workdir / "config.json")
    assert (config.model.image_shape, config.model.num_classes) == ((12, 16, 1), 3)
    assert config.data.class_names is None  # numbered classes
    record = json.loads((workdir / SOURCE_FILE).read_text())
    assert str(tmp_path / "y.npy") in record["files"]  # the labels file is part of the fingerprint


def test_a_vae_trained_on_unlabelled_npy_exports_and_encodes_it(tmp_path):
    images = np.random.default_rng(2).random((40, 10, 14, 3), dtype=np.float32)  # float RGB 0..1
    np.save(tmp_path / "x.npy", images)
    workdir = tmp_path / "run"
    assert cli.main(["train", "--workdir", str(workdir), "--npy", str(tmp_path / "x.npy"),
                     "--likelihood", "gaussian", *TINY]) == 0
    export = workdir / "exports" / "vae" / "1"
    served = tf.saved_model.load(str(export))
    generated = served.signatures[C.GENERATE](**{C.NUM_SAMPLES: tf.constant(3), C.SEED: tf.constant([1, 2], tf.int64),
                                                   C.TEMPERATURE: tf.constant(1.0)})[C.IMAGES]
    assert generated.shape == (3, 10, 14, 3)
    assert cli.main(["encode", "--model", str(export), "--npy", str(tmp_path / "x.npy"),
                     "--out", str(tmp_path / "codes"), "--no-progress"]) == 0
    table = pq.read_table(tmp_path / "codes")
    assert table.num_rows == 40 and table.column("label").null_count == 40


def test_own_data_without_labels_refuses_a_conditional_model(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((30, 8, 8), np.uint8))
    code = cli.main(["train", "--workdir", str(tmp_path / "run"), "--npy", str(tmp_path / "x.npy"),
                     "--kind", "cvae", *TINY])
    assert code == 2
    assert "carry no labels" in capsys.readouterr().err


# === TFRecords, streamed ===
def write_records(path, rng, count=48):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(count):
            kind = CLASSES[i % 2]
            data = tf.io.encode_png(shape_image(kind, rng)).numpy()
            example = tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                "class": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
            }))
            writer.write(example.SerializeToString())


def test_tfrecords_bigger_than_the_memory_limit_train_by_streaming(tmp_path):
    write_records(tmp_path / "a.tfrecord", np.random.default_rng(2))
    write_records(tmp_path / "b.tfrecord", np.random.default_rng(3))
    workdir = tmp_path / "run"
    code = cli.main(["train", "--workdir", str(workdir), "--tfrecord", str(tmp_path / "*.tfrecord"),
                     "--image-feature", "image/encoded", "--label-feature", "class", "--kind", "m2",
                     "--image-size", "16x16", "--channels", "1", *TINY, "data.in_memory_max_mb=0"])
    assert code == 0
    record = json.loads((workdir / SOURCE_FILE).read_text())
    assert record["in_memory"] is False and record["num_inputs"] == 96
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 3 and np.isfinite(metrics["test_nelbo"])
    config = RunConfig.load(workdir / "config.json")
    assert (config.model.image_shape, config.model.num_classes) == ((16, 16, 1), 2)
    # The export encodes the same records, resized to its 16x16x1, with their labels.
    assert cli.main(["encode", "--model", str(workdir / "exports" / "vae"), "--tfrecord", str(tmp_path / "a.tfrecord"),
                     "--image-feature", "image/encoded", "--label-feature", "class", "--resize",
                     "--out", str(tmp_path / "codes"), "--no-progress"]) == 0
    table = pq.read_table(tmp_path / "codes")
    assert table.column("label").to_pylist() == [i % 2 for i in range(48)]
    assert np.stack(table.column("probabilities").to_numpy(zero_copy_only=False)).shape == (48, 2)


def test_streamed_and_in_memory_batches_hold_the_same_images(photos):
    base = own_config('data.source="images"', f'data.paths=["{photos}"]').data
    held = open_own_data(base)
    streamed = open_own_data(dataclasses.replace(base, in_memory_max_mb=0))
    assert held.images is not None and streamed.images is None
    a = np.concatenate([x for x, _ in held.evaluation("test", 16, binarize=False, seed=0).as_numpy_iterator()])
    b = np.concatenate([x for x, _ in streamed.evaluation("test", 16, binarize=False, seed=0).as_numpy_iterator()])
    np.testing.assert_allclose(a, b, atol=0.5 / 255)
    train = next(iter(streamed.train(8, binarize=False, seed=0)))
    assert train[0].shape == (8, HEIGHT, WIDTH, 3)


# === Splits ===
def test_splits_are_drawn_by_seed_and_reproducible(photos):
    first = draw_splits(100, 0.1, 0.2, seed=7)
    again = draw_splits(100, 0.1, 0.2, seed=7)
    other = draw_splits(100, 0.1, 0.2, seed=8)
    assert all(np.array_equal(first[s], again[s]) for s in first)
    assert not np.array_equal(first["test"], other["test"])
    assert (len(first["validation"]), len(first["test"]), len(first["train"])) == (10, 20, 70)
    assert sorted(np.concatenate(list(first.values())).tolist()) == list(range(100))
    config = own_config('data.source="images"', f'data.paths=["{photos}"]', "data.split_seed=5").data
    assert open_own_data(config).record()["splits"] == open_own_data(config).record()["splits"]


# === Bad inputs ===
def test_a_corrupt_file_stops_training_naming_it_or_is_skipped_and_listed(tmp_path, capsys):
    root = write_folder(tmp_path / "photos", np.random.default_rng(4), per_class=10)
    (root / "circles" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    args = ["train", "--workdir", str(tmp_path / "run"), "--images", str(root), *TINY]
    assert cli.main(args) == 2
    error = capsys.readouterr().err
    assert "bad input circles/broken.png: cannot decode the image" in error and "--skip-bad" in error
    assert cli.main(args + ["--skip-bad"]) == 0
    record = json.loads((tmp_path / "run" / SOURCE_FILE).read_text())
    assert [s["id"] for s in record["skipped"]] == ["circles/broken.png"]


def test_an_image_of_another_shape_is_a_bad_input_without_resize(tmp_path):
    root = write_folder(tmp_path / "photos", np.random.default_rng(5), per_class=10)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "squares" / "zz_big.png")
    config = own_config('data.source="images"', f'data.paths=["{root}"]').data
    with pytest.raises(SourceError, match="bad input squares/zz_big.png: image is 30x30x3"):
        open_own_data(config)
    resized = open_own_data(dataclasses.replace(config, source=dataclasses.replace(config.source, resize=True)))
    assert resized.image_shape == (HEIGHT, WIDTH, 3) and not resized.skipped


# === Resume ===
def test_a_resume_after_a_file_changed_is_refused_naming_it(tmp_path):
    root = write_folder(tmp_path / "photos", np.random.default_rng(6), per_class=10)
    config = own_config('data.source="images"', f'data.paths=["{root}"]')
    workdir = tmp_path / "run"
    # A run that trained its epochs and was killed before it finished: checkpoints, no metrics.json.
    config, datasets = load_datasets(config)
    prepare(workdir, config, False, source=datasets.source)
    fit(config, datasets, make_cluster("default", 0), workdir, verbose=0)
    assert (workdir / "checkpoints").is_dir() and not (workdir / "metrics.json").exists()
    _, again = load_datasets(own_config('data.source="images"', f'data.paths=["{root}"]'))
    prepare(workdir, config, False, source=again.source)  # the same files: the run may resume
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 200, np.uint8)).save(root / "squares" / "003.png")
    with pytest.raises(WorkdirError, match=r"squares/003.png \((size|content) changed\)"):
        train(own_config('data.source="images"', f'data.paths=["{root}"]'), workdir, verbose=0)


def test_vae_tune_searches_on_a_folder_and_exports_the_best_with_its_class_names(photos, tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"model.latent_dim": {"type": "choice", "values": [2, 3]}}))
    workdir = tmp_path / "tune"
    assert cli.main(["tune", "--workdir", str(workdir), "--images", str(photos), "--space", str(space),
                     "--tuner", "random", "--max-trials", "1", "--max-epochs", "1", 'model.kind="cvae"',
                     "model.hidden_units=[32]", "train.batch_size=8", "train.steps_per_epoch=3",
                     "train.iwae_k=4", "train.eval_batch_size=16", "train.tensorboard=false"]) == 0
    best = RunConfig.load(workdir / "best_config.json")
    assert (best.data.source.kind, best.data.class_names, best.model.image_shape) == ("images", CLASSES, (HEIGHT, WIDTH, 3))
    assert json.loads((workdir / "best" / "metrics.json").read_text())["eval_examples"] == 4  # the test images
    contract = next((workdir / "exports").glob(f"*/1/assets.extra/{C.CONTRACT_FILE}"))
    assert json.loads(contract.read_text())[C.CLASS_NAMES_FIELD] == list(CLASSES)


def test_tune_takes_the_same_input_flags_and_holds_no_tfds_split_for_own_data(photos):
    from pipelines.tune import cli as tune_cli

    args = cli.build_parser().parse_args(["tune", "--workdir", "w", "--images", str(photos),
                                          "--image-size", "16x16", "--skip-bad"])
    config = tune_cli.tune_config(args)
    assert (config.data.source.kind, config.data.source.paths, config.data.image_size) == ("images", (str(photos),), (16, 16))
    # Own data is split by seed (data.validation_fraction, data.test_fraction); the tfds
    # split expressions are not applied to it.
    assert config.data.source.skip_bad and config.data.own
