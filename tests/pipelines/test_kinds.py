"""`vae train` of the conditional and semi-supervised kinds on real Fashion-MNIST: the
labelled subset, the -1 labels in the batches, a short run of each kind, and M2 under
CPU replicas."""

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from core.config import ConfigError
from model import CVAE, M2
from model.config import M2Config
from pipelines import cli, data, labelled
from pipelines.config import DataConfig, RunConfig
from pipelines.train import load_datasets, train
from serving import contract as C
from tests.pipelines.test_distribute import run

ROOT = Path(__file__).resolve().parents[2]
TRAIN_IMAGES = 54_000  # Fashion-MNIST's training images in the default data.train_split (train[:90%])


def config_of(tfds_dir, *overrides):
    config = RunConfig()
    for assignment in (f'data.data_dir="{tfds_dir}"', "model.latent_dim=4", "model.hidden_units=[128]",
                       "model.conv_filters=[8,16]", "train.epochs=2", "train.steps_per_epoch=40",
                       "train.iwae_k=5", "train.eval_examples=200", "train.eval_batch_size=100",
                       *overrides):
        config = config.override(assignment)
    return config.check_sections()


# === The labelled subset ===
def test_the_labelled_subset_is_balanced_and_reproducible(tfds_dir):
    labels = data.split_labels(data.get_builder(DataConfig.from_dict({"data_dir": tfds_dir})), "train")
    assert labels.shape == (60000,)
    first, again = labelled.select(labels, 100, 10, seed=0), labelled.select(labels, 100, 10, seed=0)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, labelled.select(labels, 100, 10, seed=1))
    assert len(np.unique(first)) == 1000
    np.testing.assert_array_equal(np.bincount(labels[first], minlength=10), np.full(10, 100))
    with pytest.raises(data.DataError, match="class 0 has only 6000"):
        labelled.select(labels, 6001, 10, seed=0)


@pytest.mark.parametrize("in_memory_max_mb", [1024, 0])  # gathered from memory, or streamed
def test_an_m2_epoch_sees_each_labelled_image_once_and_the_rest_as_minus_one(tfds_dir, in_memory_max_mb):
    config = config_of(tfds_dir, "model.kind=m2", "data.labelled_per_class=5", "train.batch_size=500",
                       f"train.steps_per_epoch={TRAIN_IMAGES // 500}", f"data.in_memory_max_mb={in_memory_max_mb}")
    config, datasets = load_datasets(config)
    assert config.model.num_classes == 10
    assert config.model.m2.alpha == pytest.approx(0.1 * (TRAIN_IMAGES / 50) ** 2)
    record = datasets.labelled
    assert record["count"] == 50 and record["class_counts"] == {str(k): 5 for k in range(10)}
    seen = np.concatenate([labels.numpy() for _, labels in datasets.train(0).take(TRAIN_IMAGES // 500)])  # one pass
    assert seen.shape == (TRAIN_IMAGES,) and set(np.unique(seen)) == {-1, *range(10)}
    np.testing.assert_array_equal(np.sort(seen[seen >= 0]), np.sort(record["labels"]))


def test_labelled_per_class_is_refused_for_other_kinds(tfds_dir):
    with pytest.raises(ConfigError, match="DataConfig.labelled_per_class is only used by model.kind='m2'"):
        config_of(tfds_dir, "data.labelled_per_class=10")


# === A short run of each kind ===
@pytest.fixture(scope="module")
def runs(tfds_dir, tmp_path_factory):
    settings = {
        "cvae_label": ["model.kind=cvae"],
        "cvae_half": ["model.kind=cvae", "model.condition=right_half", "model.architecture=conv"],
        "m2": ["model.kind=m2", "data.labelled_per_class=20"],
    }
    out = {}
    for name, overrides in settings.items():
        workdir = tmp_path_factory.mktemp(name)
        out[name] = (workdir, train(config_of(tfds_dir, *overrides), workdir, verbose=0))
    return out


def picture_ok(path):
    with Image.open(path) as picture:
        picture.verify()
    with Image.open(path) as picture:
        return picture.format == "PNG" and np.asarray(picture).std() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name, cls, picture", [("cvae_label", CVAE, "classes.png"),
                                                ("cvae_half", CVAE, "completions.png"),
                                                ("m2", M2, "classes.png")])
def test_each_kind_trains_evaluates_saves_and_draws(runs, name, cls, picture):
    workdir, metrics = runs[name]
    history = json.loads((workdir / "history.json").read_text())["metrics"]
    assert history["val_loss"][-1] < history["val_loss"][0]  # it learns
    assert metrics["test_iwae_nll"] <= metrics["test_nelbo"] + 0.5
    assert metrics["optimizer_steps"] == 80
    # Exported with its kind's signatures; a label model's export names the classes.
    description = json.loads((Path(metrics["export"]) / C.ASSETS_EXTRA / C.CONTRACT_FILE).read_text())
    kind = {"cvae_label": C.LABEL_KIND, "cvae_half": C.HALF_KIND, "m2": C.M2_KIND}[name]
    assert description[C.CONTRACT_KIND_FIELD] == kind
    assert set(description["signatures"]) == set(C.signatures_for(kind))
    if kind in C.LABEL_KINDS:
        names = description[C.CLASS_NAMES_FIELD]
        assert len(names) == 10 and names[1] == "Trouser"
    assert picture in metrics["pictures"] and picture_ok(workdir / picture)
    assert picture_ok(workdir / "samples.png") and picture_ok(workdir / "reconstructions.png")
    assert type(keras.models.load_model(workdir / "model.keras")) is cls


@pytest.mark.slow
def test_m2_reports_its_terms_the_marginal_nll_and_its_accuracy(runs):
    workdir, metrics = runs["m2"]
    history = json.loads((workdir / "history.json").read_text())["metrics"]
    assert {"classification", "entropy", "accuracy", "labelled", "val_accuracy"} <= set(history)
    assert history["val_labelled"] == [1.0, 1.0]  # the validation images keep their labels
    assert 0 < history["labelled"][-1] < 0.01  # 200 of 54,000 training images
    assert 0.1 < metrics["test_accuracy"] <= 1.0 and metrics["test_marginal_iwae_nll"] > 0
    record = json.loads((workdir / "labelled.json").read_text())
    config = RunConfig.load(workdir / "config.json")
    labels = data.split_labels(data.get_builder(config.data), config.data.train_split)
    assert record["indices"] == labelled.select(labels, 20, 10, config.train.seed).tolist()
    assert config.model.m2.alpha == pytest.approx(0.1 * (TRAIN_IMAGES / 200) ** 2)


@pytest.mark.slow
def test_vae_export_of_a_conditional_run_exports_it_with_the_class_names(runs, tmp_path, capsys):
    workdir, _ = runs["cvae_label"]
    code = cli.main(["export", "--workdir", str(workdir), "--base-dir", str(tmp_path / "exports")])
    assert code == 0
    version = tmp_path / "exports" / "vae" / "1"
    description = json.loads((version / C.ASSETS_EXTRA / C.CONTRACT_FILE).read_text())
    assert description[C.CONTRACT_KIND_FIELD] == C.LABEL_KIND and description[C.CLASS_NAMES_FIELD][1] == "Trouser"


# === Strategies ===
def test_m2_first_step_on_two_cpu_replicas_equals_one_device():
    """Mixed labelled/unlabelled batches: the per-example terms and the add_loss KL are
    scaled so that two replicas take the step one device takes."""
    script = str(ROOT / "tests/pipelines/first_step.py")
    env = {"PYTHONPATH": str(ROOT)}
    one = json.loads(run([sys.executable, script, "1", "m2"], env).strip().splitlines()[-1])
    two = json.loads(run([sys.executable, script, "2", "m2"], env).strip().splitlines()[-1])
    assert (one["replicas"], two["replicas"]) == (1, 2)
    np.testing.assert_allclose(two["update"], one["update"], rtol=1e-3, atol=1e-6)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)


def test_cli_flags_reach_the_kind_settings():
    from pipelines.train import cli as train_cli

    args = cli.build_parser().parse_args(["train", "--workdir", "w", "--kind", "m2",
                                          "--labelled-per-class", "100", "model.alpha=30"])
    config = train_cli.train_config(args)
    assert (config.model.kind, config.data.labelled_per_class, config.model.m2.alpha) == ("m2", 100, 30.0)
    args = cli.build_parser().parse_args(["train", "--workdir", "w", "--kind", "cvae", "--condition", "top_half"])
    assert train_cli.train_config(args).model.condition == "top_half"


@pytest.mark.parametrize("shift", [0, 1])
def test_an_m2_checkpoint_restores_the_classifier_too(shift, tmp_path):
    """What a killed run resumes from: the trainer's checkpoint holds every M2 weight, with
    or without the classifier's training-time shift."""
    import tensorflow as tf

    from model import ModelConfig, build_model
    from pipelines.distribute import make_cluster
    from pipelines.train.trainer import Trainer

    def trainer_of():
        model = build_model(ModelConfig(kind="m2", image_shape=(8, 8, 1), latent_dim=3,
                                        hidden_units=(16,), num_classes=4,
                                        m2=M2Config(alpha=1.0, classifier_shift=shift)), seed=0)
        model.build()
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        return model, Trainer(model, make_cluster("default", 0), global_batch=8, workdir=tmp_path,
                              tensorboard=False)

    model, trainer = trainer_of()
    images = (np.random.default_rng(0).random((8, 8, 8, 1)) < 0.5).astype("float32")
    batches = tf.data.Dataset.from_tensors((images, np.array([0, 1, -1, -1, 2, 3, -1, -1]))).repeat()
    trainer.fit(batches.skip, batches.take(1), epochs=1, steps_per_epoch=3, verbose=0)
    trained = [w.numpy() for w in model.classifier.weights]
    fresh, fresh_trainer = trainer_of()
    assert not np.allclose(fresh.classifier.weights[0].numpy(), trained[0])
    assert fresh_trainer.restore() == (1, 0)
    for restored, expected in zip(fresh.classifier.weights, trained):
        np.testing.assert_array_equal(restored.numpy(), expected)
    assert int(fresh.optimizer.iterations.numpy()) == 3
