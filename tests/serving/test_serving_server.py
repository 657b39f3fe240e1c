"""End to end over a real gRPC channel: every signature, metadata, status, health, errors."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_testlib import IMAGE_SHAPE, LATENT_DIM
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import contract as C
from serving.client import ServingError, VAEClient
from serving.tensors import to_tensor_proto


def in_process(loaded, name, **inputs):
    out = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def generate_inputs(n=4, seed=(1, 2), temperature=1.0):
    return {C.NUM_SAMPLES: np.int32(n), C.SEED: np.asarray(seed, np.int64), C.TEMPERATURE: np.float32(temperature)}


@pytest.fixture(autouse=True)
def server_still_answers(client):
    """After every test (errors included) the server still answers."""
    yield
    assert client.generate(2, seed=0).shape == (2, *IMAGE_SHAPE)


# === Signatures ===
def test_generate_same_seed_same_images_on_the_wire_and_in_process(client, loaded):
    first, again, other = client.generate(16, seed=7), client.generate(16, seed=7), client.generate(16, seed=8)
    assert first.shape == (16, *IMAGE_SHAPE) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3
    expected = in_process(loaded, C.GENERATE, **generate_inputs(16, (7, 0)))
    np.testing.assert_array_equal(first, expected[C.IMAGES])
    images, z = client.generate_with_latents(5, seed=(3, 4), temperature=0.5)
    np.testing.assert_array_equal(z, in_process(loaded, C.GENERATE, **generate_inputs(5, (3, 4), 0.5))[C.Z])


def test_generate_over_the_request_limit_is_split(client):
    images = client.generate(C.MAX_NUM_SAMPLES + 6, seed=5)
    assert images.shape == (C.MAX_NUM_SAMPLES + 6, *IMAGE_SHAPE)
    np.testing.assert_array_equal(images[:10], client.generate(10, seed=5))


def test_row_signatures_match_in_process(client, loaded, images):
    encoded = client.encode(images)
    expected = in_process(loaded, C.ENCODE, **{C.IMAGES: images})
    assert set(encoded) == {C.Z_MEAN, C.Z_LOG_VAR}
    for key in encoded:
        np.testing.assert_array_equal(encoded[key], expected[key])
    z = encoded[C.Z_MEAN]
    np.testing.assert_array_equal(client.decode(z), in_process(loaded, C.DECODE, **{C.Z: z})[C.IMAGES])
    np.testing.assert_array_equal(
        client.reconstruct(images), in_process(loaded, C.RECONSTRUCT, **{C.IMAGES: images})[C.IMAGES]
    )
    scores = client.log_likelihood(images)
    assert scores.shape == (len(images),)
    np.testing.assert_array_equal(
        scores, in_process(loaded, C.LOG_LIKELIHOOD, **{C.IMAGES: images})[C.LOG_LIKELIHOOD_KEY]
    )


def test_large_arrays_are_split_under_the_message_limit(server, client, images):
    many = np.concatenate([images] * 8)  # 64 images, 200 KB
    small = VAEClient(f"127.0.0.1:{server.port}", max_message_bytes=40_000)  # ~11 images per request
    try:
        np.testing.assert_array_equal(small.reconstruct(many), client.reconstruct(many))
        np.testing.assert_array_equal(small.encode(many)[C.Z_MEAN], client.encode(many)[C.Z_MEAN])
    finally:
        small.close()


def test_empty_signature_name_is_serving_default_and_output_filter_applies(client):
    outputs = client.predict("", generate_inputs(), outputs=[C.Z])
    assert set(outputs) == {C.Z} and outputs[C.Z].shape == (4, LATENT_DIM)
    np.testing.assert_array_equal(outputs[C.Z], client.predict(C.GENERATE, generate_inputs())[C.Z])


# === Metadata, status, health ===
def test_metadata_lists_the_signatures(client):
    metadata = client.metadata()
    assert (metadata["model_name"], metadata["version"]) == (C.MODEL_NAME, 1)
    assert set(metadata["signatures"]) == set(C.SIGNATURES) | {C.DEFAULT_SIGNATURE}
    encode = metadata["signatures"][C.ENCODE]
    assert encode["inputs"][C.IMAGES] == {"dtype": "DT_FLOAT", "shape": [-1, *IMAGE_SHAPE]}
    assert encode["outputs"][C.Z_MEAN] == {"dtype": "DT_FLOAT", "shape": [-1, LATENT_DIM]}
    assert metadata["signatures"][C.GENERATE]["inputs"][C.SEED] == {"dtype": "DT_INT64", "shape": [2]}


def test_status_and_health(server, client):
    assert client.status() == {1: {"state": "AVAILABLE", "error_code": "OK", "error_message": ""}}
    assert client.wait_until_ready(timeout=5) == 1
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", C.HEALTH_SERVICE):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()
    channel.close()


# === Errors: TF Serving's codes, messages that say what was expected ===
@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(
        f"127.0.0.1:{server.port}", options=[("grpc.max_send_message_length", -1)]
    )
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()


def predict_request(signature=C.GENERATE, inputs=None, name=C.MODEL_NAME, version=None, label=None, outputs=()):
    request = predict_pb2.PredictRequest(output_filter=list(outputs))
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in (generate_inputs() if inputs is None else inputs).items():
        request.inputs[key].CopyFrom(to_tensor_proto(value))
    return request


def zeros_images(n=1, shape=IMAGE_SHAPE, dtype=np.float32):
    return {C.IMAGES: np.zeros((n, *shape), dtype)}


CASES = {
    "unknown model": (predict_request(name="nope"), "NOT_FOUND", "Servable not found for request: Latest(nope)"),
    "unknown version": (predict_request(version=9), "NOT_FOUND", f"Specific({C.MODEL_NAME}, 9)"),
    "unknown label": (predict_request(label="canary"), "INVALID_ARGUMENT", "Unrecognized servable version label"),
    "no model name": (predict_request(name=""), "INVALID_ARGUMENT", "ModelSpec has no name"),
    "unknown signature": (predict_request("sample"), "FAILED_PRECONDITION", 'signature key "sample" not found'),
    "missing input": (
        predict_request(inputs={k: v for k, v in generate_inputs().items() if k != C.TEMPERATURE}),
        "INVALID_ARGUMENT", f"Missing but required: {{{C.TEMPERATURE}}}",
    ),
    "extra input": (
        predict_request(inputs={**generate_inputs(), "extra": np.int32(1)}), "INVALID_ARGUMENT", "Sent extra: {extra}"
    ),
    "wrong input name": (
        predict_request(C.ENCODE, {"image": np.zeros((1, *IMAGE_SHAPE), np.float32)}),
        "INVALID_ARGUMENT", f"expected to be in the set {{{C.IMAGES}}}",
    ),
    "wrong dtype": (
        predict_request(C.ENCODE, zeros_images(dtype=np.float64)), "INVALID_ARGUMENT", "DT_DOUBLE; expected DT_FLOAT"
    ),
    "wrong seed dtype": (
        predict_request(inputs={**generate_inputs(), C.SEED: np.int32([1, 2])}), "INVALID_ARGUMENT", "expected DT_INT64"
    ),
    "wrong shape": (
        predict_request(C.ENCODE, zeros_images(shape=(28, 28))), "INVALID_ARGUMENT", "expected [-1, 28, 28, 1]"
    ),
    "scalar seed": (
        predict_request(inputs={**generate_inputs(), C.SEED: np.int64(3)}), "INVALID_ARGUMENT", "expected [2]"
    ),
    "unknown output": (
        predict_request(outputs=["logits"]), "INVALID_ARGUMENT", "output tensor alias not found in signature: logits"
    ),
    "duplicate output": (
        predict_request(outputs=[C.Z, C.Z]), "INVALID_ARGUMENT", f"duplicate output tensor alias: {C.Z}"
    ),
    "too many samples": (
        predict_request(inputs=generate_inputs(C.MAX_NUM_SAMPLES + 1)), "INVALID_ARGUMENT", f"[0, {C.MAX_NUM_SAMPLES}]"
    ),
    "negative samples": (predict_request(inputs=generate_inputs(-3)), "INVALID_ARGUMENT", f"[0, {C.MAX_NUM_SAMPLES}]"),
    "non-finite temperature": (
        predict_request(inputs=generate_inputs(temperature=float("inf"))), "INVALID_ARGUMENT", "finite"
    ),
    "batch over the limit": (
        predict_request(C.DECODE, {C.Z: np.zeros((C.MAX_BATCH + 1, LATENT_DIM), np.float32)}),
        "INVALID_ARGUMENT", f"at most {C.MAX_BATCH} rows",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_predict_requests_get_tf_serving_codes(stubs, case):
    request, code, fragment = CASES[case]
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=10)
    assert err.value.code().name == code, err.value.details()
    assert fragment in err.value.details()


def test_malformed_tensor_is_invalid_argument(stubs):
    request = predict_request(C.ENCODE, zeros_images())
    request.inputs[C.IMAGES].tensor_content = b"\x00" * 12
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "tensor_content" in err.value.details()


@pytest.mark.parametrize(
    "signature, key, shape",
    [(C.ENCODE, C.IMAGES, (2**40, *IMAGE_SHAPE)), (C.DECODE, C.Z, (C.MAX_BATCH + 1, LATENT_DIM))],
    ids=["2**40 images", "one row over the limit"],
)
def test_declared_rows_over_the_limit_are_refused_before_any_allocation(stubs, signature, key, shape):
    """A tensor that declares more rows than the limit and carries no data: INVALID_ARGUMENT
    (not INTERNAL after an allocation), with the limit in the message; the server goes on."""
    request = predict_request(signature, {key: np.zeros((0, *shape[1:]), np.float32)})
    request.inputs[key].tensor_shape.dim[0].size = shape[0]
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert f"{key} has {shape[0]} rows; at most {C.MAX_BATCH} rows per request" in err.value.details()


def test_a_huge_declared_shape_without_its_data_is_invalid_argument(stubs):
    """generate_batch's inputs have no row limit of their own: a num_samples declared with
    2**40 entries and carrying one value (TensorFlow would fill the rest) is refused by its
    size against the data present, before TensorFlow allocates 4 TB; the server goes on."""
    inputs = {C.NUM_SAMPLES: np.ones(1, np.int32), C.SEED: np.zeros((1, 2), np.int64),
              C.TEMPERATURE: np.ones(1, np.float32)}
    request = predict_request(C.GENERATE_BATCH, inputs)
    counts = request.inputs[C.NUM_SAMPLES]
    counts.ClearField("tensor_content")
    counts.int_val.append(1)
    counts.tensor_shape.dim[0].size = 2**40
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert f"input '{C.NUM_SAMPLES}'" in err.value.details() and "carries 1 values" in err.value.details()


def test_message_over_the_size_limit_is_resource_exhausted(stubs):
    rows = C.MAX_MESSAGE_BYTES // C.image_bytes(IMAGE_SHAPE) + 10
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(predict_request(C.ENCODE, zeros_images(rows)), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metadata_and_status_errors(stubs):
    predict, models = stubs
    cases = [
        (
            predict.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(),
            "INVALID_ARGUMENT", "Missing ModelSpec",
        ),
        (
            predict.GetModelMetadata,
            get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": C.MODEL_NAME}),
            "INVALID_ARGUMENT", "at least one metadata_field",
        ),
        (
            predict.GetModelMetadata,
            get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": C.MODEL_NAME}, metadata_field=["x"]),
            "INVALID_ARGUMENT", "Metadata field x is not supported",
        ),
        (
            models.GetModelStatus,
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "nope"}),
            "NOT_FOUND", "Could not find any versions of model nope",
        ),
        (
            models.GetModelStatus,
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": C.MODEL_NAME, "version": {"value": 4}}),
            "NOT_FOUND", f"Could not find version 4 of model {C.MODEL_NAME}",
        ),
    ]
    for method, request, code, fragment in cases:
        with pytest.raises(grpc.RpcError) as err:
            method(request, timeout=10)
        assert err.value.code().name == code and fragment in err.value.details()


def test_client_errors_carry_code_and_message(server):
    with VAEClient(f"127.0.0.1:{server.port}", model_name="nope") as wrong:
        with pytest.raises(ServingError) as err:
            wrong.generate(2, seed=1)
    assert err.value.code == grpc.StatusCode.NOT_FOUND and "Latest(nope)" in err.value.details
    with VAEClient("127.0.0.1:1", timeout=1, max_retries=2, backoff_seconds=0.01) as dead:
        with pytest.raises(ServingError) as err:
            dead.status()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_health_answers_the_official_grpc_health_client(server):
    """Wire compatibility with grpc_health.v1 (what probes and load balancers use)."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", C.HEALTH_SERVICE):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
