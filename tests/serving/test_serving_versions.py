"""Version handling while the server runs: pick-up, availability preservation, labels, policy."""

from __future__ import annotations

import os
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
from serving_testlib import build_vae, start_server, wait_for
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import contract as C
from serving.client import ServingError, VAEClient
from serving.export import export_model
from serving.tensors import to_tensor_proto

pytestmark = pytest.mark.slow


def served_version(stub) -> int:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = C.MODEL_NAME
    request.model_spec.signature_name = C.GENERATE
    inputs = {C.NUM_SAMPLES: np.int32(2), C.SEED: np.zeros(2, np.int64), C.TEMPERATURE: np.float32(1)}
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(to_tensor_proto(value))
    return stub.Predict(request, timeout=10).model_spec.version.value


def test_new_versions_are_picked_up_without_a_restart(tmp_path, vae, export_dir):
    base = tmp_path / "exports"
    shutil.copytree(export_dir, base / C.MODEL_NAME / "1")  # version 1 = the shared export
    server = start_server(base / C.MODEL_NAME, poll_seconds=0.1, version_labels=(("stable", 1),))
    target = f"127.0.0.1:{server.port}"
    client, old = VAEClient(target), VAEClient(target, version=1)
    stable = VAEClient(target, version_label="stable")
    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        before = client.generate(8, seed=3)
        versions_seen, errors, stop = set(), [], threading.Event()

        def keep_asking():  # requests during the switch: none may fail
            while not stop.is_set():
                try:
                    versions_seen.add(served_version(stub))
                except grpc.RpcError as err:
                    errors.append(err)

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            newer = build_vae(seed=1)
            export_model(newer, base)  # version 2, different weights
            wait_for(lambda: client.status().get(2, {}).get("state") == "AVAILABLE")
            wait_for(lambda: 2 in versions_seen, timeout=10)
        finally:
            stop.set()
            asker.join()
        assert not errors and versions_seen == {1, 2}
        after = client.generate(8, seed=3)
        assert np.abs(after - before).max() > 1e-3
        z = client.generate_with_latents(8, seed=3)[1]
        np.testing.assert_allclose(after, newer.decode(z), atol=1e-5)
        np.testing.assert_array_equal(old.generate(8, seed=3), before)  # both versions stay loaded
        np.testing.assert_array_equal(stable.generate(8, seed=3), before)

        # A third version: the policy keeps the newest two, so version 1 is unloaded.
        staging = base / C.MODEL_NAME / ".copy"
        shutil.copytree(export_dir, staging)
        os.rename(staging, base / C.MODEL_NAME / "3")
        wait_for(lambda: client.status()[1]["state"] == "END")
        assert client.status()[3]["state"] == "AVAILABLE"
        with pytest.raises(ServingError) as err:
            old.generate(2, seed=0)
        assert err.value.code == grpc.StatusCode.NOT_FOUND and "Specific(vae, 1)" in err.value.details
        np.testing.assert_array_equal(client.generate(8, seed=3), before)  # 3 is a copy of 1
    finally:
        for c in (client, old, stable):
            c.close()
        channel.close()
        server.stop(grace=1)


def test_a_broken_version_is_reported_and_the_old_one_keeps_serving(tmp_path, export_dir):
    base = tmp_path / C.MODEL_NAME
    shutil.copytree(export_dir, base / "1")
    server = start_server(base, poll_seconds=0.05)
    client = VAEClient(f"127.0.0.1:{server.port}")
    try:
        expected = client.generate(4, seed=1)
        (base / "2").mkdir()
        (base / "2" / C.SAVED_MODEL_FILE).write_bytes(b"not a saved model")
        status = wait_for(lambda: (s := client.status()).get(2, {}).get("state") == "END" and s)
        assert status[2]["error_code"] != "OK" and status[2]["error_message"]
        assert status[1]["state"] == "AVAILABLE"
        np.testing.assert_array_equal(client.generate(4, seed=1), expected)
    finally:
        client.close()
        server.stop(grace=1)


def test_a_server_without_versions_answers_not_found_until_one_appears(tmp_path, vae):
    base = tmp_path / C.MODEL_NAME
    server = start_server(base, poll_seconds=0.05)
    client = VAEClient(f"127.0.0.1:{server.port}")
    try:
        with pytest.raises(ServingError) as err:
            client.generate(1, seed=0)
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        export_model(vae, tmp_path)
        assert client.wait_until_ready(timeout=30) == 1
        assert client.generate(1, seed=0).shape[0] == 1
    finally:
        client.close()
        server.stop(grace=1)


def test_shutdown_lets_in_flight_requests_finish(export_dir):
    server = start_server(export_dir.parent, poll_seconds=0, grace_seconds=10)
    client = VAEClient(f"127.0.0.1:{server.port}", max_retries=0)
    images = np.random.default_rng(0).random((C.MAX_BATCH, 28, 28, 1), dtype=np.float32)  # ~0.5 s of work
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(scores=client.log_likelihood(images)))
    try:
        worker.start()
        time.sleep(0.1)  # the request is being computed
        server.stop()
        worker.join(timeout=30)
        assert result["scores"].shape == (C.MAX_BATCH,)
        with pytest.raises(ServingError) as err:
            client.generate(1, seed=0)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        client.close()
        server.stop()


def test_a_base_path_without_versions_names_the_likely_one(tmp_path, caplog):
    from serving.manager import ModelManager

    (tmp_path / C.MODEL_NAME).mkdir()
    with caplog.at_level("WARNING"):
        ModelManager(C.MODEL_NAME, tmp_path, poll_seconds=0).start()
    assert f"did you mean {tmp_path / C.MODEL_NAME}" in caplog.text
