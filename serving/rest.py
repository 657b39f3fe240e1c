"""TF Serving's REST API (api_rest.md) and its Prometheus page, on the model server's models.

    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata   signature defs
    POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict    instances / inputs
    GET  /monitoring/prometheus/metrics                          with --monitoring-config-file

Every call becomes the gRPC request proto and goes through serving/service.py, the code the
gRPC servicers run: same look-up, validation, batching and servable. Errors are
`{"error": "<message>"}` with TF Serving's HTTP code for the status (http_server.cc).
The HTTP server is waitress (a production WSGI server), bound like the gRPC port.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from urllib.parse import unquote

import grpc
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2

from core.config import ConfigBase, require
from serving import contract as C
from serving import json_tensors as J
from serving import service
from serving.errors import RequestError, invalid
from serving.metrics import CONTENT_TYPE, REST_PREDICT, MonitoringOptions, ServingMetrics
from serving.tensors import fill_tensor_proto, from_tensor_proto

log = logging.getLogger(__name__)

# http_rest_api_util.cc
_PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
_STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?"
)
_API_PATH = re.compile(r"(?i)/v1/.*")
# ToHTTPStatusCode (http_server.cc)
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.UNAUTHENTICATED: 401,
}
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 429: "Too Many Requests", 499: "Client Closed Request",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
            504: "Gateway Timeout"}
_JSON = [("Content-Type", "application/json")]


@dataclasses.dataclass(frozen=True)
class RestOptions(ConfigBase):
    """The REST port (TF Serving's `--rest_api_port`, `--rest_api_num_threads`).

    Args:
        port: the port, on the gRPC port's interface; 0 picks a free one.
        num_threads: HTTP worker threads.
        max_concurrent_requests: requests in flight before RESOURCE_EXHAUSTED (429), like
            the gRPC port's limit.
        max_body_bytes: the largest request body accepted.
        monitoring_config_file: TF Serving's MonitoringConfig text proto (Prometheus page).
    """

    port: int = C.REST_PORT
    num_threads: int = 8
    max_concurrent_requests: int = 256
    max_body_bytes: int = 4 * C.MAX_MESSAGE_BYTES
    monitoring_config_file: str | None = None

    def __post_init__(self) -> None:
        require(self, "port", 0 <= self.port <= 65535, "must be within [0, 65535]")
        require(self, "num_threads", self.num_threads >= 1, "must be >= 1")
        require(self, "max_concurrent_requests", self.max_concurrent_requests >= 1, "must be >= 1")
        require(self, "max_body_bytes", self.max_body_bytes >= 1, "must be >= 1")

    def monitoring(self) -> MonitoringOptions:
        """The monitoring config file's settings (Prometheus off without a file)."""
        if self.monitoring_config_file is None:
            return MonitoringOptions()
        return MonitoringOptions.from_file(self.monitoring_config_file)


def _model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=unquote(name))
    if version:
        try:
            value = int(version)
            if value >= 2**63:
                raise ValueError
        except ValueError:
            raise invalid(f"Failed to convert version: {version} to numeric.") from None
        spec.version.value = value
    if label:
        spec.version_label = unquote(label)
    return spec


class RestApi:
    """The WSGI application: routes, converts and answers as TF Serving's HTTP handler.

    Args:
        models: the model look-ups (ModelManager or ModelRegistry).
        scheduler: the batcher, or None.
        metrics: where requests are counted.
        monitoring: whether and where the Prometheus page is served.
        max_concurrent_requests: in-flight limit (RESOURCE_EXHAUSTED beyond it).
    """

    def __init__(self, models, scheduler, metrics: ServingMetrics, monitoring: MonitoringOptions,
                 max_concurrent_requests: int = 256):
        self._models = models
        self._scheduler = scheduler
        self._metrics = metrics
        self._monitoring = monitoring
        self._slots = threading.BoundedSemaphore(max_concurrent_requests)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("REQUEST_URI", environ.get("PATH_INFO", "")).split("?", 1)[0]
        if self._monitoring.prometheus_enable and path == self._monitoring.prometheus_path:
            return self._reply(start_response, 200, self._metrics.page(), [("Content-Type", CONTENT_TYPE)])
        if not _API_PATH.fullmatch(path):
            return self._reply(start_response, 404, b"", [("Content-Type", "text/plain")])
        if not self._slots.acquire(blocking=False):
            error = RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Too many requests in flight")
            return self._reply(start_response, 429, J.error_body(error.message), _JSON)
        try:
            status, body = self._handle(method, path, environ)
        finally:
            self._slots.release()
        return self._reply(start_response, status, body, _JSON)

    @staticmethod
    def _reply(start_response, status: int, body: bytes, headers: list) -> list[bytes]:
        start_response(f"{status} {_REASONS.get(status, '')}", [*headers, ("Content-Length", str(len(body)))])
        return [body]

    def _handle(self, method: str, path: str, environ: dict) -> tuple[int, bytes]:
        try:
            if method == "POST" and (match := _PREDICT_PATH.fullmatch(path)):
                name, version, label, verb = match.groups()
                spec = _model_spec(name, version, label)
                if verb.lower() != "predict":
                    raise RequestError(grpc.StatusCode.UNIMPLEMENTED, f"{verb} is not served: the model has no "
                                       "classify or regress signature; use :predict")
                return 200, self._predict(spec, _read_body(environ))
            if method == "GET" and (match := _STATUS_PATH.fullmatch(path)):
                name, version, label, subresource = match.groups()
                if not name:
                    raise invalid("Missing model name in request.")
                spec = _model_spec(name, version, label)
                if subresource:
                    return 200, self._metadata(spec)
                response = service.model_status(self._models, get_model_status_pb2.GetModelStatusRequest(model_spec=spec))
                return 200, _proto_json(response)
            raise invalid(f"Malformed request: {method} {path}")
        except RequestError as err:
            return HTTP_STATUS.get(err.code, 500), J.error_body(err.message)
        except Exception as err:  # a bug must cost one request, not the server
            log.exception("REST %s %s failed", method, path)
            return 500, J.error_body(f"{method} {path} failed: {err}")

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
        """HttpRestApiHandler::ProcessPredictRequest, counted as TF Serving counts Predict."""
        start = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            document = J.parse_body(body)
            spec.signature_name = J.signature_name(document)
            key = spec.signature_name or C.DEFAULT_SIGNATURE
            definition = self._models.lookup(spec).signature_defs.get(key)  # GetInfoMap
            if definition is None:
                raise invalid(f'Serving signature name: "{key}" not found in signature def')
            dtypes = {alias: info.dtype for alias, info in definition.inputs.items()}
            tensors, rows = J.read_inputs(document, dtypes)
            request = predict_pb2.PredictRequest(model_spec=spec)
            for alias, array in tensors.items():
                _fill(request.inputs[alias], array)
            response = service.predict(self._models, self._scheduler, request)
            outputs = {alias: from_tensor_proto(proto) for alias, proto in response.outputs.items()}
            body = J.predict_body(outputs, rows)
            code = grpc.StatusCode.OK
            return body
        except RequestError as err:
            code = err.code
            raise
        finally:
            self._metrics.record(spec.name, REST_PREDICT, code.name, time.perf_counter() - start)

    def _metadata(self, spec: model_pb2.ModelSpec) -> bytes:
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec)
        request.metadata_field.append(C.SIGNATURE_DEF_FIELD)
        response = service.model_metadata(self._models, request)
        definitions = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[C.SIGNATURE_DEF_FIELD].Unpack(definitions)
        return J.orjson.dumps({
            "model_spec": _proto_dict(response.model_spec, preserve_names=True),
            "metadata": {C.SIGNATURE_DEF_FIELD: _proto_dict(definitions, preserve_names=True)},
        })


def _fill(proto, array) -> None:
    if array.dtype == object:  # DT_STRING
        import tensorflow as tf

        proto.CopyFrom(tf.make_tensor_proto(array))
    else:
        fill_tensor_proto(proto, array)


def _read_body(environ: dict) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise invalid("Content-Length is not a number") from None
    return environ["wsgi.input"].read(length) if length > 0 else b""


def _proto_dict(message, preserve_names: bool = False) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(
        message, preserving_proto_field_name=preserve_names, always_print_fields_with_no_presence=True
    )


def _proto_json(message) -> bytes:
    """A response proto as TF Serving prints it (the protos' json_name, enums by name)."""
    return J.orjson.dumps(_proto_dict(message))


class RestServer:
    """The REST port: a waitress server running `RestApi` in a background thread.

    Args:
        app: the WSGI application.
        host: the interface (the gRPC port's).
        options: port, threads and limits.
    """

    def __init__(self, app: RestApi, host: str, options: RestOptions):
        import waitress

        try:
            self._server = waitress.create_server(
                app, host=host, port=options.port, threads=options.num_threads,
                max_request_body_size=options.max_body_bytes, clear_untrusted_proxy_headers=True,
                ident="vae-serve", channel_timeout=120,
            )
        except OSError as err:
            raise RuntimeError(f"cannot bind {host}:{options.port} for REST: {err}") from None
        self.port: int = self._server.effective_port
        self._thread = threading.Thread(target=self._server.run, name="rest-server", daemon=True)

    def start(self) -> int:
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Closes the port and every connection, then stops the worker threads (a request
        still running finishes, its answer is dropped)."""

        def close_all() -> None:  # runs on the server's own loop thread, between two polls
            for dispatcher in list(self._server._map.values()):  # listener, wake-up pipe, connections
                dispatcher.close()

        if self._thread.is_alive():
            try:
                self._server.trigger.pull_trigger(close_all)
            except OSError:  # the wake-up pipe is gone: close from here; the loop ends on an empty map
                log.warning("REST server's wake-up pipe was closed; closing its connections directly")
                close_all()
            self._thread.join(timeout=10)
        self._server.task_dispatcher.shutdown(timeout=5)
