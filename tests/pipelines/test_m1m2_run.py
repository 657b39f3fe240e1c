"""`vae train --kind m1m2` on real Fashion-MNIST: M1 trained first in `m1/` and frozen,
M2 on its codes; the export served over gRPC and REST on 127.0.0.1; a given
`train.m1_workdir` checked; SIGKILL in either stage, then the same command resumes it."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines import data
from pipelines.train import train
from pipelines.train.stages import FirstStageError
from serving import contract as C
from serving.client import VAEClient
from serving.rest import RestOptions
from tests.pipelines.test_kinds import config_of

ROOT = Path(__file__).resolve().parents[2]
VAE = [sys.executable, "-m", "pipelines.cli"]
M1M2 = ["model.kind=m1m2", "data.labelled_per_class=20", "model.m1m2.latent_dim=3", "model.m1m2.hidden_units=[32]"]


@pytest.fixture(scope="module")
def run(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("m1m2")
    return workdir, train(config_of(tfds_dir, *M1M2), workdir, verbose=0)


def weights(model, *layers):
    return [w.numpy() for layer in layers for w in getattr(model, layer).weights]


@pytest.mark.slow
def test_m1m2_trains_m1_first_then_m2_on_its_frozen_codes(run):
    workdir, metrics = run
    m1_metrics = json.loads((workdir / "m1" / "metrics.json").read_text())
    assert json.loads((workdir / "m1" / "config.json").read_text())["model"]["kind"] == "vae"
    assert "data.labelled_per_class" not in json.dumps(json.loads((workdir / "m1" / "config.json").read_text()))
    assert m1_metrics["optimizer_steps"] == metrics["optimizer_steps"] == 80
    m1 = keras.models.load_model(workdir / "m1" / "model.keras")
    stacked = keras.models.load_model(workdir / "model.keras")
    for mine, theirs in zip(weights(stacked, "encoder", "decoder"), weights(m1, "encoder", "decoder")):
        np.testing.assert_array_equal(mine, theirs)  # M1 as its own run left it
    history = json.loads((workdir / "history.json").read_text())["metrics"]
    assert {"classification", "entropy", "accuracy", "labelled"} <= set(history)
    assert 0.1 < metrics["test_accuracy"] <= 1.0 and metrics["test_marginal_iwae_nll"] > 0
    assert metrics["test_iwae_nll"] <= metrics["test_nelbo"] + 0.5


@pytest.fixture(scope="module")
def served(run):
    from serving.server import ModelServer, ServerOptions

    workdir, metrics = run
    server = ModelServer(ServerOptions(model_base_path=str(Path(metrics["export"]).parent), port=0,
                                       poll_seconds=0, rest=RestOptions(port=0, num_threads=2)))
    server.start()
    client = VAEClient(f"127.0.0.1:{server.port}", timeout=30)
    client.wait_until_ready(30)
    yield workdir, metrics, server, client
    client.close()
    server.stop(grace=1)


def real_test_images(tfds_dir, count=16):
    config = config_of(tfds_dir, *M1M2)
    images, labels = next(iter(data.evaluation_dataset(data.get_builder(config.data), config.data,
                                                       config.data.test_split, count, binarize=False, seed=0)))
    return images.numpy(), labels.numpy()


@pytest.mark.slow
def test_the_export_serves_m2s_contract_and_classifies_as_the_model_does(served, tfds_dir):
    workdir, metrics, _, client = served
    description = json.loads((Path(metrics["export"]) / C.ASSETS_EXTRA / C.CONTRACT_FILE).read_text())
    assert description[C.CONTRACT_KIND_FIELD] == C.M2_KIND
    images, _ = real_test_images(tfds_dir)
    model = keras.models.load_model(workdir / "model.keras")
    np.testing.assert_allclose(client.classify(images), model.classify(images), atol=1e-5)
    loaded = tf.saved_model.load(metrics["export"])
    encoded = loaded.signatures[C.ENCODE](**{C.IMAGES: tf.constant(images)})
    np.testing.assert_allclose(encoded[C.Z_MEAN].numpy(), model.encode(images)[0], atol=1e-5)
    assert client.num_classes() == 10


@pytest.mark.slow
def test_generate_with_labels_over_grpc_and_rest_is_the_models_stacked_decoding(served):
    workdir, _, server, client = served
    model = keras.models.load_model(workdir / "model.keras")
    labels = [0, 1, 7, 9]
    images = client.generate(labels=labels, seed=3)
    np.testing.assert_allclose(images, model.generate(labels, seed=[3, 0]), atol=1e-5)
    body = {"signature_name": C.GENERATE, "inputs": {C.LABELS: labels, C.SEED: [3, 0], C.TEMPERATURE: 1.0}}
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest.port}/v1/models/{C.MODEL_NAME}:predict",
                                     data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        outputs = json.loads(response.read())["outputs"]
    np.testing.assert_allclose(np.asarray(outputs[C.IMAGES]), images, atol=1e-5)
    with pytest.raises(Exception, match=r"labels must be within \[0, 10\)"):
        client.generate(labels=[0, 10], seed=1)


@pytest.mark.slow
def test_a_given_m1_workdir_is_used_as_it_is_and_one_of_other_data_is_refused(run, tfds_dir, tmp_path):
    workdir, _ = run
    given = train(config_of(tfds_dir, *M1M2, f'train.m1_workdir="{workdir / "m1"}"'), tmp_path / "given", verbose=0)
    assert not (tmp_path / "given" / "m1").exists() and given["optimizer_steps"] == 80
    model = keras.models.load_model(tmp_path / "given" / "model.keras")
    m1 = keras.models.load_model(workdir / "m1" / "model.keras")
    for mine, theirs in zip(weights(model, "encoder"), weights(m1, "encoder")):
        np.testing.assert_array_equal(mine, theirs)
    other = config_of(tfds_dir, *M1M2, f'train.m1_workdir="{workdir / "m1"}"', 'data.train_split="train[:50%]"')
    with pytest.raises(FirstStageError, match=r"data.train_split='train\[:90%\]' \(this run: 'train\[:50%\]'\)"):
        train(other, tmp_path / "other", verbose=0)
    wider = config_of(tfds_dir, *M1M2, f'train.m1_workdir="{workdir / "m1"}"', "model.latent_dim=6")
    with pytest.raises(FirstStageError, match=r"model.latent_dim=4 \(this M1\+M2: 6\)"):
        train(wider, tmp_path / "wider", verbose=0)
    with pytest.raises(FirstStageError, match="holds no finished `vae train` run"):
        train(config_of(tfds_dir, *M1M2, f'train.m1_workdir="{tmp_path}"'), tmp_path / "none", verbose=0)


def kill_when(process, path: Path, marker: str, timeout: float = 300) -> None:
    """SIGKILLs `process` once `path` holds `marker` (a checkpoint of the stage)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and marker in path.read_text():
            break
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before {path} held {marker}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_sigkill_in_either_stage_then_the_same_command_finishes_both(tmp_path, tfds_dir):
    args = ["--kind", "m1m2", "--labelled-per-class", "20", "--epochs", "3", "train.steps_per_epoch=60",
            "train.checkpoint_every_steps=20", "train.iwae_k=5", "train.eval_examples=200",
            "train.tensorboard=false", "model.m1m2.hidden_units=[64]"]
    command = [*VAE, "train", "--workdir", str(tmp_path / "w"), *args]

    def start():
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    kill_when(start(), tmp_path / "w" / "m1" / "checkpoints" / "checkpoint", "ckpt-80")  # in M1's 2nd epoch
    assert not (tmp_path / "w" / "m1" / "metrics.json").exists()
    kill_when(start(), tmp_path / "w" / "checkpoints" / "checkpoint", "ckpt-80")  # M1 finished, then M2 killed
    assert (tmp_path / "w" / "m1" / "metrics.json").exists() and not (tmp_path / "w" / "metrics.json").exists()
    done = subprocess.run([*VAE, "-v", "train", "--workdir", str(tmp_path / "w"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "holds a finished M1" in done.stderr and "resum" in done.stderr.lower()
    m1 = json.loads((tmp_path / "w" / "m1" / "metrics.json").read_text())
    m1m2 = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert m1["optimizer_steps"] == m1m2["optimizer_steps"] == 180
    assert not (tmp_path / "w" / "checkpoints").exists() and not (tmp_path / "w" / "m1" / "checkpoints").exists()


def test_vae_tune_refuses_m1m2_and_says_how_to_tune_it(tfds_dir, tmp_path):
    from core.config import ConfigError
    from pipelines.tune import tune

    with pytest.raises(ConfigError, match="tune that run with --kind vae, then train this kind on it"):
        tune(config_of(tfds_dir, *M1M2), tmp_path / "search")
    assert not (tmp_path / "search").exists()
