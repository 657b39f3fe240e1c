"""Every `vae train` command that README.md and docs/ show runs to its end: each one is
collected from the pages themselves, given the inputs it names (a folder of images, .npy
arrays and labels, TFRecord files, a config file: small ones made here), its workdir moved
to a temporary folder, and cut short (one epoch of two steps, 100 test images at k = 2;
the full default evaluation is checked once per kind and architecture by
tests/pipelines/test_evaluation_memory.py). A command that splits the CPU into replicas
runs in its own process, since TensorFlow's devices are fixed once it starts."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.test_docs import vae_commands

CUT = ["train.epochs=1", "train.steps_per_epoch=2", "train.eval_examples=100", "train.iwae_k=2"]
# Inputs from outside this machine: a dataset that needs the network to be prepared.
NEEDS_NETWORK = {"--download", "mnist"}
IMAGES = 300
OVERRIDE = re.compile(r"^(model|data|train)(\.\w+)+=")


def training_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of each distinct `vae train` command of the docs, the ones that need
    the network left out."""
    seen, found = set(), []
    for where, argv in vae_commands():
        if not argv or argv[0] != "train" or NEEDS_NETWORK & set(argv):
            continue
        key = tuple(word for i, word in enumerate(argv)  # the workdir and the length: set here
                    if not {"--workdir", "--epochs", "-v"} & set(argv[max(i - 1, 0):i + 1]))
        if key not in seen:
            seen.add(key)
            found.append((where, argv))
    return found


def make_inputs(folder) -> None:
    """What the documented commands read: photos/ (two classes), data/*.npy with
    labels.npy, data/*.tfrecord (PNG bytes and an int64 label), my.json and a tune run's
    best_config.json."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (IMAGES, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 2, IMAGES)
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / "photos" / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((40, 40)).save(folder / "photos" / f"class{label}" / f"{i:03d}.png")
    (folder / "data").mkdir()
    np.save(folder / "data" / "part0.npy", images[: IMAGES // 2])
    np.save(folder / "data" / "part1.npy", images[IMAGES // 2:])
    np.save(folder / "labels.npy", labels)
    with tf.io.TFRecordWriter(str(folder / "data" / "part0.tfrecord")) as writer:
        for image, label in zip(images, labels):
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png.getvalue()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            })).SerializeToString())
    config = json.dumps({"train": {"learning_rate": 5e-4}})
    (folder / "my.json").write_text(config)
    (folder / "runs" / "tune").mkdir(parents=True)
    (folder / "runs" / "tune" / "best_config.json").write_text(config)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tfds_dir):
    folder = tmp_path_factory.mktemp("docs-inputs")
    make_inputs(folder)
    return folder


def test_the_docs_show_training_commands_for_own_images_arrays_records_and_every_kind():
    commands = [" ".join(argv) for _, argv in training_commands()]
    for needle in ("--images", "--npy", "--tfrecord", "--kind cvae", "--kind m2", "--condition"):
        assert any(needle in command for command in commands), needle


@pytest.mark.slow
@pytest.mark.parametrize("where, argv", training_commands(), ids=lambda value: value if isinstance(value, str) else "")
def test_documented_training_command_runs_to_its_end(where, argv, inputs, tmp_path, monkeypatch):
    from pipelines.cli import main

    argv = list(argv)
    workdir = tmp_path / "run"
    argv[argv.index("--workdir") + 1] = str(workdir)
    overrides = [i for i, word in enumerate(argv) if OVERRIDE.match(word)]
    at = overrides[-1] + 1 if overrides else len(argv)  # after the command's own overrides
    argv[at:at] = CUT
    monkeypatch.chdir(inputs)
    if "--cpu-replicas" in argv:  # the devices of a new TensorFlow process
        done = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], env=dict(os.environ),
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{where}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    else:
        assert main(argv) == 0, where
    if "--print-config" in argv:
        assert not workdir.exists()
        return
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["iwae_k"] == 2
    assert (workdir / "exports").is_dir()
