"""A kind defined and registered in one test file (`tests/kinds/capacity_vae.py`) goes the
whole way: `vae train` trains it on its own objective and evaluates it, the export serves it
over gRPC and REST, and `vae encode` batch-encodes with it."""

import json
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines import cli
from serving import contract as C
from tests.kinds import capacity_vae as capacity

TRAIN = ["--latent-dim", "4", "--batch-size", "64", "--epochs", "1", "model.hidden_units=[64]",
         "train.steps_per_epoch=30", "train.iwae_k=4", "train.eval_examples=200", "train.eval_batch_size=100",
         "train.tensorboard=false"]


@pytest.fixture(scope="module", autouse=True)
def registered():
    with capacity.registered():
        yield


@pytest.fixture(scope="module")
def run(registered, tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("capacity") / "run"
    assert cli.main(["train", "--workdir", str(workdir), "--kind", capacity.NAME, *TRAIN]) == 0
    return workdir, json.loads((workdir / "metrics.json").read_text())


def images(count: int) -> np.ndarray:
    return (np.random.default_rng(0).random((count, 28, 28, 1)) < 0.3).astype("float32")


def test_the_registered_kind_trains_on_its_own_objective_and_is_evaluated(run):
    from pipelines.train import load_saved_model

    workdir, metrics = run
    history = json.loads((workdir / "history.json").read_text())["metrics"]
    assert np.isfinite(history["capacity_gap"]).all()  # the term the kind adds, logged by the trainer
    assert np.isfinite(metrics["test_nelbo"]) and metrics["test_iwae_nll"] <= metrics["test_nelbo"] + 0.5
    model = load_saved_model(workdir / "model.keras")
    assert type(model) is capacity.CapacityVAE and model.model_config.kind == capacity.NAME
    terms = model.loss_terms(images(8), seed=np.array([1, 2], np.int64))
    np.testing.assert_allclose(
        terms["loss"], terms["reconstruction"] + capacity.GAMMA * np.abs(terms["kl"] - capacity.CAPACITY), rtol=1e-5)


def test_the_registered_kind_is_exported_and_served_over_grpc_and_rest(run):
    from pipelines.train import load_saved_model
    from serving.client import VAEClient
    from serving.rest import RestOptions
    from serving.server import ModelServer, ServerOptions

    workdir, metrics = run
    export = Path(metrics["export"])
    description = json.loads((export / C.ASSETS_EXTRA / C.CONTRACT_FILE).read_text())
    assert set(description["signatures"]) == set(C.signatures_for(C.PLAIN_KIND))  # served as the VAE is
    model, batch = load_saved_model(workdir / "model.keras"), images(4)
    server = ModelServer(ServerOptions(model_base_path=str(export.parent), port=0, poll_seconds=0,
                                       rest=RestOptions(port=0)))
    server.start()
    try:
        client = VAEClient(f"127.0.0.1:{server.port}", timeout=60)
        client.wait_until_ready(timeout=60)
        codes = client.encode(batch)
        np.testing.assert_allclose(codes[C.Z_MEAN], np.asarray(model.encode(batch)[0]), atol=1e-5)
        generated = client.generate(3, seed=7)
        assert generated.shape == (3, 28, 28, 1) and np.array_equal(generated, client.generate(3, seed=7))
        body = json.dumps({"signature_name": C.ENCODE, "inputs": {C.IMAGES: batch.tolist()}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{server.rest.port}/v1/models/{C.MODEL_NAME}:predict",
                                         data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            outputs = json.loads(response.read())["outputs"]
        np.testing.assert_allclose(np.asarray(outputs[C.Z_MEAN]), codes[C.Z_MEAN], atol=1e-6)
    finally:
        server.stop(grace=1)


def test_the_registered_kind_batch_encodes_from_its_export(run, tmp_path):
    _, metrics = run
    out = tmp_path / "codes"
    assert cli.main(["encode", "--model-base-path", str(Path(metrics["export"]).parent), "--dataset", "fashion_mnist",
                     "--split", "test[:64]", "--output-dir", str(out), "--no-progress"]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 64 and np.isfinite(np.stack(table.column(C.Z_MEAN).to_numpy(zero_copy_only=False))).all()
