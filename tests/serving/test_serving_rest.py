"""The REST API and Prometheus page of `vae serve`, against a real server on 127.0.0.1.

Every REST answer is compared value for value with the same server's gRPC answer; every
error class gets TF Serving's HTTP code and a JSON error body, and the server keeps
answering; the metrics page, parsed with prometheus_client's parser, counts what the tests
sent.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families
from serving_testlib import start_server, wait_for
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import contract as C
from serving import json_tensors as J
from serving.errors import RequestError
from serving.metrics import REQUEST_COUNT, REQUEST_LATENCY, MonitoringOptions
from serving.rest import RestOptions
from serving.tensors import from_tensor_proto, to_tensor_proto

MONITORING_CONFIG = Path(__file__).resolve().parents[2] / "serving" / "monitoring.config"
LABEL = "stable"


# === Helpers ===
def http(port: int, path: str, body=None, method: str | None = None) -> tuple[int, dict]:
    """(HTTP status, JSON body) of one request; `body` is JSON-encoded unless it is bytes."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def scrape(port: int) -> dict:
    """{(metric sample name, frozenset of labels): value} from the Prometheus page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/monitoring/prometheus/metrics", timeout=30) as r:
        text = r.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def request_count(page: dict, status: str, model: str = C.MODEL_NAME) -> float:
    # prometheus_client's parser names a counter's samples <name>_total
    return page.get((f"{REQUEST_COUNT}_total", frozenset({"model_name": model, "status": status}.items())), 0.0)


def grpc_predict(channel, signature: str, inputs: dict, version: int | None = None) -> dict[str, np.ndarray]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = C.MODEL_NAME
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(to_tensor_proto(value))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    return {k: from_tensor_proto(v) for k, v in response.outputs.items()}


def as_arrays(value, names) -> dict[str, np.ndarray]:
    """A `predictions` / `outputs` value as arrays by output name."""
    if len(names) == 1:
        return {names[0]: np.asarray(value)}
    if isinstance(value, dict):
        return {n: np.asarray(value[n]) for n in names}
    return {n: np.asarray([row[n] for row in value]) for n in names}


# === Fixtures ===
@pytest.fixture(scope="module")
def rest_server(export_dir):
    rest = RestOptions(port=0, num_threads=4, monitoring_config_file=str(MONITORING_CONFIG))
    server = start_server(export_dir.parent, poll_seconds=0, rest=rest, version_labels=((LABEL, 1),))
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def port(rest_server) -> int:
    return rest_server.rest.port


@pytest.fixture(scope="module")
def channel(rest_server):
    with grpc.insecure_channel(f"127.0.0.1:{rest_server.port}") as channel:
        yield channel


def signature_inputs(images) -> dict[str, dict[str, np.ndarray]]:
    z = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    return {
        C.ENCODE: {C.IMAGES: images[:3]},
        C.DECODE: {C.Z: z},
        C.RECONSTRUCT: {C.IMAGES: images[:2]},
        C.LOG_LIKELIHOOD: {C.IMAGES: images[:2]},
        C.GENERATE: {C.NUM_SAMPLES: np.int32(4), C.SEED: np.array([3, 4], np.int64), C.TEMPERATURE: np.float32(0.8)},
        C.DEFAULT_SIGNATURE: {C.NUM_SAMPLES: np.int32(2), C.SEED: np.array([5, 6], np.int64),
                              C.TEMPERATURE: np.float32(1.0)},
        C.GENERATE_BATCH: {C.NUM_SAMPLES: np.array([2, 1], np.int32), C.SEED: np.array([[1, 2], [3, 4]], np.int64),
                           C.TEMPERATURE: np.array([1.0, 0.5], np.float32)},
    }


ROW_SIGNATURES = [C.ENCODE, C.DECODE, C.RECONSTRUCT, C.LOG_LIKELIHOOD, C.GENERATE_BATCH]
ALL_SIGNATURES = ROW_SIGNATURES + [C.GENERATE, C.DEFAULT_SIGNATURE]


# === Status and metadata ===
def test_rest_status_equals_grpc_status_for_model_version_and_label(port, channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = C.MODEL_NAME
    expected = json_format.MessageToDict(stub.GetModelStatus(request, timeout=30),
                                         always_print_fields_with_no_presence=True)
    assert expected["model_version_status"][0]["state"] == "AVAILABLE"
    for path in ("/v1/models/vae", "/v1/models/vae/versions/1", f"/v1/models/vae/labels/{LABEL}"):
        assert http(port, path) == (200, expected), path
    assert http(port, "/v1/models/vae")[1] == {
        "model_version_status": [{"version": "1", "state": "AVAILABLE",
                                  "status": {"error_code": "OK", "error_message": ""}}]
    }


def test_rest_metadata_equals_grpc_signature_defs(port, channel):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = C.MODEL_NAME
    request.metadata_field.append(C.SIGNATURE_DEF_FIELD)
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=30)
    definitions = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[C.SIGNATURE_DEF_FIELD].Unpack(definitions)
    expected = json_format.MessageToDict(definitions, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
    for path in ("/v1/models/vae/metadata", "/v1/models/vae/versions/1/metadata"):
        status, body = http(port, path)
        assert status == 200
        assert body["model_spec"] == {"name": "vae", "version": "1", "signature_name": ""}
        assert body["metadata"][C.SIGNATURE_DEF_FIELD] == expected
    assert set(expected["signature_def"]) >= set(ALL_SIGNATURES)


# === Predict ===
@pytest.mark.parametrize("signature", ALL_SIGNATURES)
def test_rest_columnar_predict_equals_grpc_value_for_value(port, channel, images, signature):
    inputs = signature_inputs(images)[signature]
    expected = grpc_predict(channel, signature, inputs)
    body = {"signature_name": signature, "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}}
    status, answer = http(port, "/v1/models/vae:predict", body)
    assert status == 200, answer
    got = as_arrays(answer["outputs"], sorted(expected))
    for name, value in expected.items():
        assert np.array_equal(got[name].astype(value.dtype), value), name


@pytest.mark.parametrize("signature", ROW_SIGNATURES)
def test_rest_row_predict_equals_grpc_value_for_value(port, channel, images, signature):
    inputs = signature_inputs(images)[signature]
    expected = grpc_predict(channel, signature, inputs)
    names = sorted(inputs)
    rows = len(next(iter(inputs.values())))
    if len(names) == 1:  # the input name may be left out
        instances = inputs[names[0]].tolist()
    else:
        instances = [{n: inputs[n][i].tolist() for n in names} for i in range(rows)]
    status, answer = http(port, "/v1/models/vae/versions/1:predict",
                          {"signature_name": signature, "instances": instances})
    assert status == 200, answer
    got = as_arrays(answer["predictions"], sorted(expected))
    for name, value in expected.items():
        assert np.array_equal(got[name].astype(value.dtype), value), name


def test_rest_row_predict_accepts_named_single_input_and_label_url(port, channel, images):
    expected = grpc_predict(channel, C.ENCODE, {C.IMAGES: images[:2]})
    body = {"signature_name": C.ENCODE, "instances": [{C.IMAGES: image.tolist()} for image in images[:2]]}
    status, answer = http(port, f"/v1/models/vae/labels/{LABEL}:predict", body)
    assert status == 200, answer
    assert np.array_equal(np.asarray([r[C.Z_MEAN] for r in answer["predictions"]], np.float32), expected[C.Z_MEAN])


# === Errors ===
GOOD_GENERATE = {"inputs": {C.NUM_SAMPLES: 1, C.SEED: [1, 2], C.TEMPERATURE: 1.0}}
ERRORS = [
    # (name, path, body, HTTP status, part of the message)
    ("malformed_json", "/v1/models/vae:predict", b'{"instances": [1,', 400, "JSON Parse error"),
    ("empty_body", "/v1/models/vae:predict", b"", 400, "The document is empty"),
    ("not_an_object", "/v1/models/vae:predict", b"[1, 2]", 400, "Is not object"),
    ("instances_and_inputs", "/v1/models/vae:predict",
     {"signature_name": C.DECODE, "instances": [[0.0] * 4], "inputs": [[0.0] * 4]}, 400, "only one of"),
    ("neither_instances_nor_inputs", "/v1/models/vae:predict", {"signature_name": C.DECODE}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("ragged_rows", "/v1/models/vae:predict", {"signature_name": C.DECODE, "instances": [[0.0] * 4, [0.0] * 3]},
     400, "Expecting tensor size: 4 but got: 3"),
    ("ragged_columns", "/v1/models/vae:predict", {"signature_name": C.DECODE, "inputs": [[0.0] * 4, [0.0] * 3]},
     400, "Encountered list at unexpected size: 3 at level: 1 expected size: 4"),
    ("string_for_float", "/v1/models/vae:predict", {"signature_name": C.DECODE, "inputs": [["a"] * 4]},
     400, "is not of expected type: float"),
    ("missing_named_input", "/v1/models/vae:predict",
     {"signature_name": C.GENERATE, "inputs": {C.NUM_SAMPLES: 1, C.SEED: [1, 2]}}, 400,
     f"Missing named input: {C.TEMPERATURE}"),
    ("wrong_latent_size", "/v1/models/vae:predict", {"signature_name": C.DECODE, "inputs": [[0.0] * 5]},
     400, "expected [-1, 4]"),
    ("over_the_limit", "/v1/models/vae:predict",
     {"inputs": {C.NUM_SAMPLES: C.MAX_NUM_SAMPLES + 1, C.SEED: [1, 2], C.TEMPERATURE: 1.0}}, 400,
     f"{C.NUM_SAMPLES} must be within"),
    ("unknown_signature", "/v1/models/vae:predict", {"signature_name": "nope", "inputs": [1]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("unknown_model", "/v1/models/nope:predict", GOOD_GENERATE, 404, "Servable not found for request: Latest(nope)"),
    ("unknown_version", "/v1/models/vae/versions/9:predict", GOOD_GENERATE, 404, "Specific(vae, 9)"),
    ("unknown_label", "/v1/models/vae/labels/nope:predict", GOOD_GENERATE, 400,
     "Unrecognized servable version label: nope"),
    ("status_of_unknown_model", "/v1/models/nope", None, 404, "nope"),
    ("status_without_model_name", "/v1/models", None, 400, "Missing model name in request."),
    ("malformed_url", "/v1/modelz/vae", None, 400, "Malformed request: GET /v1/modelz/vae"),
    ("classify_not_served", "/v1/models/vae:classify", {"examples": [{}]}, 501, "classify"),
]


@pytest.mark.parametrize("name,path,body,status,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_rest_error_answers_tf_serving_http_code_and_json_error_then_serves_again(
    port, name, path, body, status, message
):
    got_status, answer = http(port, path, body)
    assert got_status == status, answer
    assert set(answer) == {"error"} and message in answer["error"], answer
    assert http(port, "/v1/models/vae:predict", GOOD_GENERATE)[0] == 200


def test_rest_and_grpc_refuse_an_invalid_request_with_the_same_message(port, channel):
    inputs = {C.Z: np.zeros((2, 5), np.float32)}
    with pytest.raises(grpc.RpcError) as caught:
        grpc_predict(channel, C.DECODE, inputs)
    status, answer = http(port, "/v1/models/vae:predict", {"signature_name": C.DECODE, "inputs": inputs[C.Z].tolist()})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and status == 400
    assert answer["error"] == caught.value.details()


def test_rest_answers_429_over_the_in_flight_limit_and_503_for_a_full_batching_queue(export_dir, images):
    from serving.batching import BatchingOptions

    # A batch waits (up to a minute) for 8 rows; the queue holds 8 rows; 2 requests in flight.
    batching = BatchingOptions(max_batch_size=8, batch_timeout_micros=60_000_000, max_enqueued_batches=1)
    rest = RestOptions(port=0, num_threads=4, max_concurrent_requests=2,
                       monitoring_config_file=str(MONITORING_CONFIG))
    server = start_server(export_dir.parent, poll_seconds=0, batching=batching, rest=rest)
    port = server.rest.port
    answers: list[tuple[int, dict]] = []
    encode = {"signature_name": C.ENCODE, "inputs": images[:4].tolist()}
    waiting = [
        threading.Thread(target=lambda body=body: answers.append(http(port, "/v1/models/vae:predict", body)))
        for body in (encode, GOOD_GENERATE)
    ]
    try:
        waiting[0].start()  # 4 rows wait in the encode queue
        wait_for(lambda: server.scheduler.queue_depths()[C.ENCODE] == (1, 4))
        page = scrape(port)
        assert page[(":vae:serving:batching:queue_depth", frozenset({"queue": C.ENCODE, "unit": "rows"}.items()))] == 4
        status, answer = http(port, "/v1/models/vae:predict", {"signature_name": C.ENCODE, "inputs": images[:5].tolist()})
        assert status == 503 and "queue" in answer["error"]  # 4 + 5 rows > 8: UNAVAILABLE
        waiting[1].start()  # waits in the generate queue: 2 requests in flight
        wait_for(lambda: server.scheduler.queue_depths()[C.GENERATE][0] == 1)
        status, answer = http(port, "/v1/models/vae", None)
        assert status == 429 and answer == {"error": "Too many requests in flight"}  # RESOURCE_EXHAUSTED
    finally:
        server.scheduler.stop()  # the waiting batches run now
        for thread in waiting:
            if thread.is_alive():
                thread.join(timeout=60)
    try:
        assert [status for status, _ in answers] == [200, 200]
        assert http(port, "/v1/models/vae")[0] == 200  # still serving
    finally:
        server.stop(grace=1)


# === Metrics ===
def test_metrics_page_counts_the_requests_by_status_and_front_door(port, channel):
    before = scrape(port)
    assert http(port, "/v1/models/vae:predict", GOOD_GENERATE)[0] == 200
    assert http(port, "/v1/models/vae:predict", GOOD_GENERATE)[0] == 200
    assert http(port, "/v1/models/vae:predict", b"{")[0] == 400
    assert http(port, "/v1/models/vae/versions/9:predict", GOOD_GENERATE)[0] == 404
    grpc_predict(channel, C.GENERATE, {C.NUM_SAMPLES: np.int32(1), C.SEED: np.array([1, 2], np.int64),
                                       C.TEMPERATURE: np.float32(1.0)})
    after = scrape(port)
    assert request_count(after, "OK") - request_count(before, "OK") == 3
    assert request_count(after, "INVALID_ARGUMENT") - request_count(before, "INVALID_ARGUMENT") == 1
    assert request_count(after, "NOT_FOUND") - request_count(before, "NOT_FOUND") == 1

    def latency_count(page, api, entrypoint):
        labels = frozenset({"model_name": "vae", "API": api, "entrypoint": entrypoint}.items())
        return page.get((f"{REQUEST_LATENCY}_count", labels), 0.0)

    assert latency_count(after, "predict", "REST") - latency_count(before, "predict", "REST") == 2
    assert latency_count(after, "Predict", "GRPC") - latency_count(before, "Predict", "GRPC") == 1


def test_metrics_page_uses_tf_serving_sample_names_and_types(port):
    http(port, "/v1/models/vae:predict", GOOD_GENERATE)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/monitoring/prometheus/metrics", timeout=30) as r:
        text = r.read().decode()
    assert f"# TYPE {REQUEST_COUNT} counter" in text
    assert f'{REQUEST_COUNT}{{model_name="vae",status="OK"}}' in text  # no _total suffix, as TF Serving
    assert f"# TYPE {REQUEST_LATENCY} histogram" in text
    assert f'{REQUEST_LATENCY}_bucket{{model_name="vae",API="predict",entrypoint="REST",le="+Inf"}}' in text
    assert "_created" not in text


def test_monitoring_config_file_of_the_compose_file_enables_the_page():
    options = MonitoringOptions.from_file(MONITORING_CONFIG)
    assert options.prometheus_enable and options.prometheus_path == "/monitoring/prometheus/metrics"
    assert not MonitoringOptions.from_text("").prometheus_enable
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="MonitoringConfig"):
        MonitoringOptions.from_text("prometheus_config { enabled: true }")


# === JSON values ===
def test_b64_objects_are_binary_values_of_string_tensors_only():
    value = J.to_array([{"b64": "aW1hZ2UgYnl0ZXM="}, "text"], types_pb2.DT_STRING)
    assert value.tolist() == [b"image bytes", b"text"]
    with pytest.raises(RequestError, match="Unable to base64 decode"):
        J.to_array([{"b64": "not base64!"}], types_pb2.DT_STRING)
    with pytest.raises(RequestError, match="Type: Object is not of expected type: float"):
        J.to_array([{"b64": "aW1hZ2U="}], types_pb2.DT_FLOAT)


def test_json_numbers_that_do_not_fit_the_dtype_are_refused_as_tf_serving_does():
    with pytest.raises(RequestError, match="without loss of precision"):
        J.to_array([1e39], types_pb2.DT_FLOAT)
    with pytest.raises(RequestError, match="is not of expected type: int32"):
        J.to_array([1.5], types_pb2.DT_INT32)
    with pytest.raises(RequestError, match="is not of expected type: float"):
        J.to_array([True, False], types_pb2.DT_FLOAT)
    assert np.isnan(J.to_array([float("nan")], types_pb2.DT_FLOAT)).all()  # NaN is accepted


def test_string_outputs_named_bytes_are_written_as_b64():
    body = json.loads(J.predict_body({"image_bytes": np.array([b"\x00\xff"], dtype=object),
                                      "caption": np.array([b"sea"], dtype=object)}, rows=True))
    assert body == {"predictions": [{"caption": "sea", "image_bytes": {"b64": "AP8="}}]}
