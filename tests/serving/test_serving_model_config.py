"""`vae serve --model-config-file`: every model of a TF Serving models.config, live reloads.

Real servers on 127.0.0.1 over real exports: version folders are the session's export (seed
0 weights) and one more export with seed 1 weights, copied into per-test layouts, so the
version that answers can be told from the response's model spec and from the images.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_testlib import build_vae, wait_for
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from core.config import ConfigError
from serving import contract as C
from serving.model_config import (
    ALL,
    LATEST,
    SPECIFIC,
    VersionPolicy,
    load_model_config,
    parse_model_config,
)
from serving.rest import RestOptions
from serving.server import ModelServer, ServerOptions
from serving.tensors import from_tensor_proto, to_tensor_proto

ROOT = Path(__file__).resolve().parents[2]
GENERATE_INPUTS = {C.NUM_SAMPLES: np.int32(2), C.SEED: np.array([7, 8], np.int64), C.TEMPERATURE: np.float32(1)}


# === Helpers ===
def model_block(name: str, base_path: str, policy: str = "", labels: dict[str, int] | None = None) -> str:
    label_text = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in (labels or {}).items())
    policy_text = f"    model_version_policy {{ {policy} }}\n" if policy else ""
    return (f'  config {{\n    name: "{name}"\n    base_path: "{base_path}"\n    model_platform: "tensorflow"\n'
            f"{policy_text}{label_text}  }}\n")


def write_config(path: Path, *blocks: str) -> Path:
    """Writes a models.config atomically (a reader sees the old file or the new one)."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text("model_config_list {\n" + "".join(blocks) + "}\n")
    os.replace(staging, path)
    return path


def start(config_file: Path, **options) -> ModelServer:
    server = ModelServer(ServerOptions(model_config_file=str(config_file), port=0, poll_seconds=0, **options))
    server.start()
    return server


def predict(channel, name: str, version: int | None = None, label: str | None = None):
    """(model name, version, images) of one generate call, as the response names them."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = C.GENERATE
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in GENERATE_INPUTS.items():
        request.inputs[key].CopyFrom(to_tensor_proto(value))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return response.model_spec.name, response.model_spec.version.value, from_tensor_proto(response.outputs[C.IMAGES])


def grpc_code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def status(channel, name: str) -> dict[int, str]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    state = get_model_status_pb2.ModelVersionStatus.State.Name
    return {s.version: state(s.state) for s in response.model_version_status}


def http(port: int, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def rest_generate(port: int, path: str) -> tuple[int, dict]:
    inputs = {k: np.asarray(v).tolist() for k, v in GENERATE_INPUTS.items()}
    return http(port, path, {"signature_name": C.GENERATE, "inputs": inputs})


# === Fixtures ===
@pytest.fixture(scope="module")
def seed1_export(tmp_path_factory) -> Path:
    """A version folder with other weights than the session's export (seed 1)."""
    from serving.export import export_model

    return export_model(build_vae(1), tmp_path_factory.mktemp("seed1"))


@pytest.fixture
def layout(tmp_path, export_dir, seed1_export):
    """tmp/a/{1: seed 0, 2: seed 1}, tmp/b/{1: seed 0}: copies of real exports."""

    def place(source: Path, model: str, version: int) -> None:
        shutil.copytree(source, tmp_path / model / str(version))

    place(export_dir, "a", 1)
    place(seed1_export, "a", 2)
    place(export_dir, "b", 1)
    return tmp_path


# === Reading the file ===
def test_the_compose_models_config_parses_as_tf_serving_reads_it():
    config = load_model_config(ROOT / "serving" / "models.config")
    (model,) = config.models
    assert (model.name, model.base_path, model.version_labels) == (C.MODEL_NAME, C.CONTAINER_MODEL_BASE_PATH, ())
    assert model.policy == VersionPolicy(LATEST, 2) == VersionPolicy(LATEST, ServerOptions(model_base_path="x").num_versions)


@pytest.mark.parametrize("policy, expected", [
    ("", VersionPolicy(LATEST, 1)),  # no policy: the latest version
    ("latest { }", VersionPolicy(LATEST, 1)),  # num_versions 0 means 1 in TF Serving
    ("latest { num_versions: 3 }", VersionPolicy(LATEST, 3)),
    ("all { }", VersionPolicy(ALL)),
    ("specific { versions: 4 versions: 2 }", VersionPolicy(SPECIFIC, versions=(2, 4))),
])
def test_version_policies_read_as_tf_serving_reads_them(tmp_path, policy, expected):
    config = parse_model_config("model_config_list {" + model_block("m", "/srv/m", policy) + "}", tmp_path / "x.config")
    assert config.models[0].policy == expected


def test_relative_base_paths_resolve_against_the_config_folder(tmp_path):
    text = "model_config_list {" + model_block("a", "../exports/a") + model_block("b", "/abs/b") + \
        model_block("c", "gs://bucket/c") + "}"
    config = parse_model_config(text, tmp_path / "conf" / "models.config")
    assert [m.base_path for m in config.models] == [str(tmp_path / "exports" / "a"), "/abs/b", "gs://bucket/c"]


@pytest.mark.parametrize("text, message", [
    ("model_config_list { config { name: 'a' bse_path: '/x' } }", 'no field named "bse_path"'),
    ("model_config_list { config { base_path: '/x' model_platform: 'tensorflow' } }", "config[0].name must not be"),
    (("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'tensorflow' } "
     "config { name: 'a' base_path: '/y' model_platform: 'tensorflow' } }"), "illegal to list model a multiple times"),
    ("model_config_list { config { name: 'a' model_platform: 'tensorflow' } }", "config[0] (model 'a').base_path must"),
    ("model_config_list { config { name: 'a' base_path: '/x' } }", "neither model_type (deprecated) nor model_platform"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'tensorflow' model_type: TENSORFLOW } }",
     "both model_type (deprecated) and model_platform"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'pytorch' } }",
     "model_platform 'pytorch' is not supported"),
    (("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'tensorflow' "
     "model_version_policy { specific { } } } }"), "model_version_policy.specific lists no versions"),
    ("custom_model_config { }", "custom_model_config is not supported"),
])
def test_a_bad_file_is_a_config_error_naming_the_file_and_field(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        parse_model_config(text, tmp_path / "bad.config")
    assert str(err.value).startswith(str(tmp_path / "bad.config")) and message in str(err.value)


def test_the_deprecated_model_type_still_reads_as_tensorflow(tmp_path):
    config = parse_model_config("model_config_list { config { name: 'a' base_path: '/x' model_type: TENSORFLOW } }",
                                tmp_path / "x.config")
    assert config.models[0].name == "a"


# === Serving the models of a file ===
def test_two_models_from_one_config_answer_over_grpc_and_rest(layout):
    # a by a path relative to the file's folder, b by an absolute one
    config = write_config(layout / "models.config", model_block("a", "a"), model_block("b", str(layout / "b")))
    server = start(config, rest=RestOptions(port=0, num_threads=2))
    port = server.rest.port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            name_a, version_a, images_a = predict(channel, "a")
            name_b, version_b, images_b = predict(channel, "b")
            assert (name_a, version_a, name_b, version_b) == ("a", 2, "b", 1)  # latest 1 of each
            assert np.abs(images_a - images_b).max() > 1e-3  # two SavedModels: a/2 has seed 1 weights, b/1 seed 0
            np.testing.assert_array_equal(predict(channel, "a", version=2)[2], images_a)
            assert grpc_code(lambda: predict(channel, "a", version=1)) == grpc.StatusCode.NOT_FOUND  # not aspired
            assert status(channel, "a") == {2: "AVAILABLE"} and status(channel, "b") == {1: "AVAILABLE"}
            assert grpc_code(lambda: predict(channel, "c")) == grpc.StatusCode.NOT_FOUND
            assert grpc_code(lambda: status(channel, "c")) == grpc.StatusCode.NOT_FOUND
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        for name, images in (("a", images_a), ("b", images_b)):
            code, body = rest_generate(port, f"/v1/models/{name}:predict")
            assert code == 200, body
            np.testing.assert_array_equal(np.asarray(body["outputs"][C.IMAGES], np.float32), images)
            assert http(port, f"/v1/models/{name}")[1]["model_version_status"][0]["state"] == "AVAILABLE"
            assert http(port, f"/v1/models/{name}/metadata")[1]["model_spec"]["name"] == name
        code, body = rest_generate(port, "/v1/models/c:predict")
        assert code == 404 and "Servable not found for request: Latest(c)" in body["error"]
        assert http(port, "/v1/models/c")[0] == 404
    finally:
        server.stop(grace=1)


def test_specific_pins_a_version_and_all_serves_every_version(layout):
    shutil.copytree(layout / "b" / "1", layout / "b" / "2")
    config = write_config(layout / "models.config", model_block("a", "a", "specific { versions: 1 }"),
                          model_block("b", "b", "all { }"))
    server = start(config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert predict(channel, "a")[:2] == ("a", 1)  # the newer a/2 on disk is not served
            assert grpc_code(lambda: predict(channel, "a", version=2)) == grpc.StatusCode.NOT_FOUND
            assert status(channel, "a") == {1: "AVAILABLE"}
            assert status(channel, "b") == {1: "AVAILABLE", 2: "AVAILABLE"}
            assert [predict(channel, "b", version=v)[1] for v in (1, 2)] == [1, 2]
            assert predict(channel, "b")[1] == 2
    finally:
        server.stop(grace=1)


def test_version_labels_from_the_file_select_versions_over_grpc_and_rest(layout):
    config = write_config(layout / "models.config",
                          model_block("a", "a", "all { }", labels={"stable": 1, "canary": 2}))
    server = start(config, allow_version_labels_for_unavailable_models=True, rest=RestOptions(port=0, num_threads=2))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stable, canary = predict(channel, "a", label="stable"), predict(channel, "a", label="canary")
            assert (stable[1], canary[1]) == (1, 2) and np.abs(stable[2] - canary[2]).max() > 1e-3
            assert grpc_code(lambda: predict(channel, "a", label="nope")) == grpc.StatusCode.INVALID_ARGUMENT
        code, body = rest_generate(server.rest.port, "/v1/models/a/labels/stable:predict")
        assert code == 200
        np.testing.assert_array_equal(np.asarray(body["outputs"][C.IMAGES], np.float32), stable[2])
        assert http(server.rest.port, "/v1/models/a/labels/canary")[1]["model_version_status"][0]["version"] == "2"
        assert rest_generate(server.rest.port, "/v1/models/a/labels/nope:predict")[0] == 400
    finally:
        server.stop(grace=1)


def test_config_edits_are_picked_up_live_without_a_failed_request(layout, caplog):
    config = write_config(layout / "models.config", model_block("a", "a", "specific { versions: 1 }"))
    server = start(config, model_config_poll_seconds=0.05)
    seen, errors, stop = set(), [], threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:

        def keep_calling() -> None:  # every request during the edits must succeed
            for _ in range(100_000):
                if stop.is_set():
                    return
                try:
                    seen.add(predict(channel, "a")[1])
                except grpc.RpcError as err:
                    errors.append(err)

        caller = threading.Thread(target=keep_calling)
        caller.start()
        try:
            wait_for(lambda: 1 in seen)
            # Pin the newer version and add a model, in one edit.
            a_pinned_2 = model_block("a", "a", "specific { versions: 2 }")
            write_config(config, a_pinned_2, model_block("b", "b"))
            wait_for(lambda: server.manager.available_versions == {"a": [2], "b": [1]})
            wait_for(lambda: 2 in seen)
            assert predict(channel, "b")[:2] == ("b", 1)
            # A label on a version that is AVAILABLE is taken without any flag.
            labelled = model_block("a", "a", "specific { versions: 2 }", labels={"stable": 2})
            write_config(config, labelled, model_block("b", "b"))
            wait_for(lambda: _answers(lambda: predict(channel, "a", label="stable")))
            assert predict(channel, "a", label="stable")[1] == 2
            # A label on a version that is not loaded is refused; so is a malformed file.
            with caplog.at_level("ERROR", logger="serving.registry"):
                write_config(config, model_block("a", "a", "specific { versions: 2 }", labels={"old": 1}))
                wait_for(lambda: "version 1 of model a is not currently available" in caplog.text)
                config.write_text("model_config_list { config { name: 'a' ")
                wait_for(lambda: "not a ModelServerConfig text proto" in caplog.text)
            assert predict(channel, "b")[1] == 1 and predict(channel, "a", label="stable")[1] == 2  # config kept
            # Remove b.
            write_config(config, labelled)
            wait_for(lambda: "b" not in server.manager.available_versions)
            assert grpc_code(lambda: predict(channel, "b")) == grpc.StatusCode.NOT_FOUND
            assert status(channel, "b") == {1: "END"}  # as TF Serving's state monitor reports it
            assert status(channel, "a") == {1: "END", 2: "AVAILABLE"}
        finally:
            stop.set()
            caller.join(timeout=60)
            server.stop(grace=1)
    assert not caller.is_alive()
    assert not errors, errors[:3]
    assert seen == {1, 2}


def _answers(call) -> bool:
    try:
        call()
        return True
    except grpc.RpcError:
        return False


# === Bad files and flags: exit code 2 from `vae serve` ===
@pytest.mark.parametrize("case", ["malformed", "missing folder", "missing file", "label at start-up",
                                  "with --model-base-path", "with --num-versions", "no model"])
def test_vae_serve_answers_a_bad_config_with_exit_code_2(layout, capsys, case):
    from pipelines.cli import main

    config = layout / "models.config"
    flags: list[str] = []
    expected = str(config)
    if case == "malformed":
        config.write_text('model_config_list {\n  config { name: "a" bse_path: "a" }\n}\n')
        expected = 'not a ModelServerConfig text proto: 2:22 : Message type "tensorflow.serving.ModelConfig" has no field named "bse_path"'
    elif case == "missing folder":
        write_config(config, model_block("a", "a"), model_block("gone", "no-such-folder"))
        expected = f"config[1].base_path of model 'gone' is '{layout / 'no-such-folder'}', which is not a folder"
    elif case == "missing file":
        config = layout / "nothing.config"
        expected = f"model config file '{config}' cannot be read"
    elif case == "label at start-up":
        write_config(config, model_block("a", "a", labels={"stable": 1}))
        expected = "--allow-version-labels-for-unavailable-models"
    elif case == "no model":
        config.write_text("# nothing yet\n")
        expected = "names no model"
    else:
        write_config(config, model_block("a", "a"))
        flags = ["--model-base-path", "a"] if "base-path" in case else ["--num-versions", "1"]
        expected = f"--model-config-file excludes {flags[0]}"
    assert main(["serve", "--model-config-file", str(config), "--port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vae serve: error: ") and expected in err, err


def test_config_only_flags_need_a_config_file(capsys):
    from pipelines.cli import main

    assert main(["serve", "--model-base-path", "x", "--model-config-file-poll-wait-seconds", "5"]) == 2
    assert "need --model-config-file" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "give --model-base-path (one model) or --model-config-file" in capsys.readouterr().err


def test_an_empty_file_takes_no_action_but_an_empty_list_unloads_every_model(layout):
    from tensorflow_serving.apis import model_pb2

    from serving.errors import RequestError
    from serving.registry import ModelRegistry

    config = write_config(layout / "models.config", model_block("a", "a"))
    registry = ModelRegistry(str(config), poll_seconds=0)
    registry.start()
    try:
        assert registry.lookup(model_pb2.ModelSpec(name="a")).version == 2
        config.write_text("# being rewritten\n")
        assert registry.reload() is False and registry.available_versions == {"a": [2]}  # as TF Serving
        config.write_text("model_config_list { }\n")
        assert registry.reload() is True and registry.available_versions == {}
        with pytest.raises(RequestError) as err:
            registry.lookup(model_pb2.ModelSpec(name="a"))
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        assert {v: s.state for v, s in registry.status(model_pb2.ModelSpec(name="a")).items()} == {
            2: get_model_status_pb2.ModelVersionStatus.END}
    finally:
        registry.stop()


def test_a_reload_config_request_over_grpc_adds_and_pins_models_and_refuses_a_bad_list(layout, export_dir):
    """ModelService/HandleReloadConfigRequest, as TF Serving's clients send it."""
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2
    from tensorflow_serving.config import model_server_config_pb2

    def reload_request(*blocks: str) -> model_management_pb2.ReloadConfigRequest:
        request = model_management_pb2.ReloadConfigRequest()
        text = "model_config_list {\n" + "".join(blocks) + "}\n"
        request.config.CopyFrom(text_format.Parse(text, model_server_config_pb2.ModelServerConfig()))
        return request

    config = write_config(layout / "models.config", model_block("a", str(layout / "a")))
    server = start(config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            assert grpc_code(lambda: predict(channel, "b")) == grpc.StatusCode.NOT_FOUND
            response = stub.HandleReloadConfigRequest(reload_request(
                model_block("a", str(layout / "a"), "specific { versions: 1 }"),
                model_block("b", str(layout / "b"))), timeout=60)
            assert response.status.error_code == 0
            wait_for(lambda: status(channel, "a") == {1: "AVAILABLE", 2: "END"}, timeout=30)
            assert predict(channel, "a")[:2] == ("a", 1)  # pinned to version 1 by the request
            assert predict(channel, "b")[:2] == ("b", 1)  # added by the request

            bad = reload_request(model_block("c", str(layout / "no-such-folder")))
            with pytest.raises(grpc.RpcError) as err:
                stub.HandleReloadConfigRequest(bad, timeout=60)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "no-such-folder" in err.value.details() and "ReloadConfigRequest" in err.value.details()
            assert predict(channel, "b")[:2] == ("b", 1)  # the running config stays
    finally:
        server.stop(grace=1)

    single = ModelServer(ServerOptions(model_base_path=str(export_dir.parent), port=0, poll_seconds=0))
    single.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{single.port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.HandleReloadConfigRequest(reload_request(model_block("b", str(layout / "b"))), timeout=60)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--model-config-file" in err.value.details()
    finally:
        single.stop(grace=1)
