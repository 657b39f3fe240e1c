"""The model server's three calls, behind every front door: Predict, GetModelMetadata and
GetModelStatus on `tensorflow_serving.apis` protos.

The gRPC servicers (serving/server.py) and the REST API (serving/rest.py) both call these
functions, so a request gets the same look-up, validation, batching and servable whichever
door it came through; each door only translates (protos or JSON) and maps the error code
(gRPC status or HTTP status). `models` is anything with TF Serving's look-ups: a
`ModelManager` (one model) or a `ModelRegistry` (a models.config).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2

from serving import contract as C
from serving.batching import BatchScheduler
from serving.errors import RequestError, invalid
from serving.tensors import fill_tensor_proto

log = logging.getLogger(__name__)


class Models(Protocol):
    """What the calls need from the model side (ModelManager and ModelRegistry have it)."""

    def lookup(self, spec: model_pb2.ModelSpec): ...

    def status(self, spec: model_pb2.ModelSpec) -> Mapping: ...


def predict(
    models: Models,
    scheduler: BatchScheduler | None,
    request: predict_pb2.PredictRequest,
    is_active: Callable[[], bool] = lambda: True,
) -> predict_pb2.PredictResponse:
    """Runs a PredictRequest as TF Serving does.

    Args:
        models: the loaded models.
        scheduler: the batcher, or None to run every request on its own.
        request: the request (empty signature name: `serving_default`).
        is_active: False once the caller has gone (a queued request is then dropped).

    Raises:
        RequestError: TF Serving's code and message (NOT_FOUND, FAILED_PRECONDITION,
            INVALID_ARGUMENT, UNAVAILABLE, ...); INTERNAL for a bug, logged.
    """
    try:
        servable = models.lookup(request.model_spec)
        prepared = servable.prepare(request)
        outputs = None
        if scheduler is not None:
            outputs = scheduler.submit(servable, prepared, is_active)
        if outputs is None:
            outputs = servable.run(prepared.signature, prepared.inputs, prepared.outputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = request.model_spec.signature_name or C.DEFAULT_SIGNATURE
        for alias in prepared.outputs:
            fill_tensor_proto(response.outputs[alias], outputs[alias])
        return response
    except RequestError:
        raise
    except Exception as err:  # a bug must cost one request, not the server
        log.exception("Predict failed")
        raise RequestError(grpc.StatusCode.INTERNAL, f"Predict failed: {err}") from None


def model_metadata(
    models: Models, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The signature defs of the version a GetModelMetadataRequest names.

    Raises:
        RequestError: INVALID_ARGUMENT for a request without model spec or with a field
            other than `signature_def`; the look-up's NOT_FOUND / INVALID_ARGUMENT.
    """
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
    if not request.metadata_field:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != C.SIGNATURE_DEF_FIELD:
            raise invalid(f"Metadata field {field} is not supported")
    servable = models.lookup(request.model_spec)
    definitions = get_model_metadata_pb2.SignatureDefMap()
    for key, definition in servable.signature_defs.items():
        definitions.signature_def[key].CopyFrom(definition)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata[C.SIGNATURE_DEF_FIELD].Pack(definitions)
    return response


def model_status(
    models: Models, request: get_model_status_pb2.GetModelStatusRequest
) -> get_model_status_pb2.GetModelStatusResponse:
    """The state of every known version of a model, or of the one version the spec names.

    Raises:
        RequestError: INVALID_ARGUMENT without a model spec or with an unknown label;
            NOT_FOUND for an unknown model or version.
    """
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
    spec = request.model_spec
    if spec.WhichOneof("version_choice") == "version_label":  # the version the label names
        version = models.lookup(spec).version
        spec = model_pb2.ModelSpec(name=spec.name)
        spec.version.value = version
    states = models.status(spec)
    response = get_model_status_pb2.GetModelStatusResponse()
    for version, state in states.items():
        entry = response.model_version_status.add(version=version, state=state.state)
        entry.status.error_code = state.error_code.value[0]
        entry.status.error_message = state.error_message
    return response
