"""The embedded model server: TF Serving's gRPC API over the same export folders.

It implements `PredictionService.Predict` and `GetModelMetadata` and `ModelService`'s
`GetModelStatus` and `HandleReloadConfigRequest` (`tensorflow_serving.apis`) with TF
Serving's semantics and status codes, plus gRPC health checking, optional TLS, request
limits, server-side batching and graceful shutdown. It never imports the Keras model: it loads SavedModels.

Example:
    >>> server = ModelServer(ServerOptions(model_base_path="exports/vae", port=0))
    >>> port = server.start()   # versions loaded, health SERVING
    >>> server.stop()
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from core.config import ConfigBase, ConfigError, require
from serving import contract as C
from serving import service
from serving.batching import BatchingOptions, BatchScheduler
from serving.errors import RequestError
from serving.manager import ModelManager
from serving.metrics import GRPC_PREDICT, ServingMetrics
from serving.model_config import config_from_proto
from serving.registry import ModelRegistry
from serving.rest import RestApi, RestOptions, RestServer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServerOptions(ConfigBase):
    """Everything `vae serve` can set.

    Args:
        model_base_path: the folder with the version folders (`<export base>/<model name>`);
            empty with `model_config_file`.
        model_name: the name requests must use.
        host: interface to bind (loopback by default).
        port: gRPC port; 0 picks a free one (`ModelServer.start` returns it).
        poll_seconds: how often to look for new versions (TF Serving's
            `--file_system_poll_wait_seconds`); 0 loads once.
        num_versions: newest versions kept loaded (`model_version_policy { latest }`); 0: all.
        version_labels: (label, version) pairs (`version_labels` of models.config).
        model_config_file: TF Serving's models.config (serving/model_config.py): serve every
            model it lists with its version policy and labels, instead of `model_base_path`,
            `model_name`, `num_versions` and `version_labels`.
        model_config_poll_seconds: how often the config file is read again (TF Serving's
            `--model_config_file_poll_wait_seconds`); 0 reads it once.
        allow_version_labels_for_unavailable_models: a config's new label may name a version
            not loaded yet (TF Serving's flag of that name).
        batching: server-side batching, or None to run every request on its own.
        max_workers: gRPC handler threads.
        max_concurrent_rpcs: requests in flight before RESOURCE_EXHAUSTED.
        max_message_bytes: gRPC receive and send limit.
        tls_cert_file, tls_key_file: PEM server certificate chain and key; both or neither.
        tls_client_ca_file: PEM CA that client certificates must chain to (mutual TLS).
        grace_seconds: how long in-flight requests may finish on shutdown.
        tf_intra_op_threads, tf_inter_op_threads: TensorFlow's thread pools (TF Serving's
            `--tensorflow_intra_op_parallelism`/`--tensorflow_inter_op_parallelism`); 0 lets
            TensorFlow choose. Only applied if TensorFlow has not started yet in the process.
        cpus: CPU ids the whole process is confined to (like `taskset -c` or Docker's
            `--cpuset-cpus`); empty: no change. See `_confine_process`.
        rest: TF Serving's REST API (and Prometheus page) on the same interface, or None.
    """

    model_base_path: str = ""
    model_name: str = C.MODEL_NAME
    host: str = C.DEFAULT_HOST
    port: int = C.GRPC_PORT
    poll_seconds: float = 1.0
    num_versions: int = 2
    version_labels: tuple[tuple[str, int], ...] = ()
    model_config_file: str | None = None
    model_config_poll_seconds: float = 0.0
    allow_version_labels_for_unavailable_models: bool = False
    batching: BatchingOptions | None = None
    max_workers: int = 16
    max_concurrent_rpcs: int = 256
    max_message_bytes: int = C.MAX_MESSAGE_BYTES
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    grace_seconds: float = 5.0
    tf_intra_op_threads: int = 0
    tf_inter_op_threads: int = 0
    cpus: tuple[int, ...] = ()
    rest: RestOptions | None = None

    def __post_init__(self) -> None:
        require(self, "model_base_path", bool(self.model_base_path) or bool(self.model_config_file),
                "must not be empty (or give model_config_file)")
        exclusive = not (self.model_config_file and (self.model_base_path or self.version_labels))
        require(self, "model_config_file", exclusive,
                "excludes model_base_path and version_labels (the file names the models, policies and labels)")
        require(self, "model_config_poll_seconds", self.model_config_poll_seconds >= 0, "must be >= 0")
        require(self, "model_name", bool(self.model_name), "must not be empty")
        require(self, "port", 0 <= self.port <= 65535, "must be within [0, 65535]")
        require(self, "poll_seconds", self.poll_seconds >= 0, "must be >= 0")
        require(self, "num_versions", self.num_versions >= 0, "must be >= 0")
        require(self, "tls_key_file", (self.tls_cert_file is None) == (self.tls_key_file is None),
                "goes together with tls_cert_file (both or neither)")
        require(self, "tls_client_ca_file", self.tls_client_ca_file is None or self.tls_cert_file is not None,
                "needs tls_cert_file and tls_key_file")
        require(self, "max_workers", self.max_workers >= 1, "must be >= 1")
        require(self, "max_concurrent_rpcs", self.max_concurrent_rpcs >= 1, "must be >= 1")
        require(self, "max_message_bytes", self.max_message_bytes >= 1, "must be >= 1")
        require(self, "grace_seconds", self.grace_seconds >= 0, "must be >= 0")
        require(self, "tf_intra_op_threads", self.tf_intra_op_threads >= 0, "must be >= 0")
        require(self, "tf_inter_op_threads", self.tf_inter_op_threads >= 0, "must be >= 0")
        require(self, "cpus", all(cpu >= 0 for cpu in self.cpus), "must be CPU ids >= 0")


class BindError(RuntimeError):
    """The server's address cannot be bound (in use, or not an address of this host)."""


def _abort(context: grpc.ServicerContext, error: RequestError) -> NoReturn:
    context.abort(error.code, error.message)
    raise AssertionError("unreachable")  # context.abort raises


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata (serving/service.py); Classify, Regress and
    MultiInference stay UNIMPLEMENTED."""

    def __init__(self, manager: ModelManager, scheduler: BatchScheduler | None, metrics: ServingMetrics):
        self._manager = manager
        self._scheduler = scheduler
        self._metrics = metrics

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return service.predict(self._manager, self._scheduler, request, context.is_active)
        except RequestError as err:
            code = err.code
            _abort(context, err)
        finally:
            self._metrics.record(request.model_spec.name, GRPC_PREDICT, code.name, time.perf_counter() - start)

    def GetModelMetadata(self, request, context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        try:
            return service.model_metadata(self._manager, request)
        except RequestError as err:
            _abort(context, err)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus (serving/service.py) and HandleReloadConfigRequest (a server started
    with a models.config takes a new model list over gRPC, as TF Serving's does)."""

    def __init__(self, manager: ModelManager | ModelRegistry):
        self._manager = manager

    def GetModelStatus(self, request, context) -> get_model_status_pb2.GetModelStatusResponse:
        try:
            return service.model_status(self._manager, request)
        except RequestError as err:
            _abort(context, err)

    def HandleReloadConfigRequest(self, request, context) -> model_management_pb2.ReloadConfigResponse:
        if not isinstance(self._manager, ModelRegistry):
            _abort(context, RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this server serves one model from --model-base-path; start it with --model-config-file "
                "to change its models with ReloadConfigRequest",
            ))
        try:
            config = config_from_proto(request.config, "ReloadConfigRequest", Path.cwd())
            self._manager.apply_request(config)
        except ConfigError as err:
            log.error("ReloadConfig failed: %s", err)
            _abort(context, RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(err)))
        return model_management_pb2.ReloadConfigResponse()


def _credentials(options: ServerOptions) -> grpc.ServerCredentials | None:
    if options.tls_cert_file is None:
        return None
    pair = (Path(options.tls_key_file).read_bytes(), Path(options.tls_cert_file).read_bytes())
    client_ca = Path(options.tls_client_ca_file).read_bytes() if options.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


class ModelServer:
    """Owns the manager, the batcher, the health service and the gRPC server.

    Args:
        options: the server options.
    """

    def __init__(self, options: ServerOptions):
        self.options = options
        if options.cpus:
            _confine_process(options.cpus)
        _configure_tensorflow_threads(options)
        self.health = health.HealthServicer()
        self._set_health(False)
        self.manager: ModelManager | ModelRegistry
        if options.model_config_file:
            self.manager = ModelRegistry(
                options.model_config_file,
                poll_seconds=options.poll_seconds,
                config_poll_seconds=options.model_config_poll_seconds,
                allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
                on_change=self._set_health,
            )
        else:
            self.manager = ModelManager(
                options.model_name,
                options.model_base_path,
                num_versions=options.num_versions,
                poll_seconds=options.poll_seconds,
                version_labels=dict(options.version_labels),
                on_change=self._set_health,
            )
        self.scheduler = BatchScheduler(options.batching) if options.batching else None
        self.metrics = ServingMetrics(self.scheduler.queue_depths if self.scheduler else None)
        self.rest: RestServer | None = None
        limits = [
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.max_send_message_length", options.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="grpc"),
            options=limits,
            maximum_concurrent_rpcs=options.max_concurrent_rpcs,
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.manager, self.scheduler, self.metrics), self._server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.manager), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self.port: int | None = None
        self._stopped = threading.Event()

    def _set_health(self, serving: bool) -> None:
        Status = health_pb2.HealthCheckResponse
        status = Status.SERVING if serving else Status.NOT_SERVING
        for name in (health.OVERALL_HEALTH, C.HEALTH_SERVICE):
            self.health.set(name, status)

    def start(self) -> int:
        """Loads the versions found on disk, binds and starts serving.

        Returns:
            The bound port.

        Raises:
            BindError: the address could not be bound.
            ConfigError: the model config file is bad (serving/registry.py).
        """
        self.manager.start()
        address = f"{self.options.host}:{self.options.port}"
        credentials = _credentials(self.options)
        try:
            if credentials is None:
                port = self._server.add_insecure_port(address)
            else:
                port = self._server.add_secure_port(address, credentials)
        except RuntimeError as err:
            self.manager.stop()
            raise BindError(f"cannot bind {address}: {err}") from None
        if port == 0:
            self.manager.stop()
            raise BindError(f"cannot bind {address}")
        self._server.start()
        self.port = port
        if self.options.rest is not None:
            self._start_rest(self.options.rest)
        served = (f"the models of {self.options.model_config_file}" if self.options.model_config_file
                  else f"model {self.options.model_name!r} from {self.options.model_base_path}")
        log.info(
            "serving %s on %s:%d (%s, batching %s, versions %s)",
            served, self.options.host, port,
            "TLS" if credentials else "plaintext", "on" if self.scheduler else "off",
            self.manager.available_versions or "none yet",
        )
        return port

    def _start_rest(self, options: RestOptions) -> None:
        app = RestApi(self.manager, self.scheduler, self.metrics, options.monitoring(),
                      options.max_concurrent_requests)
        try:
            self.rest = RestServer(app, self.options.host, options)
        except RuntimeError as err:
            self._server.stop(0)
            self.manager.stop()
            raise BindError(str(err)) from None
        self.rest.start()
        log.info("REST API on %s:%d", self.options.host, self.rest.port)

    def stop(self, grace: float | None = None) -> None:
        """Stops accepting requests, lets in-flight ones finish, then stops the threads."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.rest is not None:
            self.rest.stop()
        self.health.enter_graceful_shutdown()
        grace = self.options.grace_seconds if grace is None else grace
        self._server.stop(grace).wait()
        if self.scheduler is not None:
            self.scheduler.stop()
            for key, (batches, requests) in self.scheduler.stats().items():
                if batches:
                    log.info("batching %s: %d requests in %d batches (%.1f per batch)",
                             key, requests, batches, requests / batches)
        self.manager.stop()
        log.info("server stopped")

    def wait(self) -> None:
        self._server.wait_for_termination()


def _confine_process(cpus: tuple[int, ...]) -> None:
    """Confines every thread of this process, and the threads they start, to `cpus` (Linux).

    Each request passes between several threads (gRPC's poller and handler threads,
    TensorFlow's pools). Spread over cores, every hand-off wakes a sleeping core, which on
    a small (virtual) machine costs more than the work; confined to one core they hand off
    there, and the other cores stay free for the clients. TensorFlow sizes its thread pools
    from the mask when it starts. Measured on 2 cores, with the clients on the same machine:
    see README, "Serving" benchmarks.

    Raises:
        OSError: none of `cpus` is available to this process.
    """
    seen: set[str] = set()
    while tasks := set(os.listdir("/proc/self/task")) - seen:  # again for threads started meanwhile
        for task in tasks:
            try:
                os.sched_setaffinity(int(task), cpus)
            except ProcessLookupError:  # the thread ended
                pass
        seen |= tasks
    log.info("confined to CPUs %s", sorted(cpus))


def _configure_tensorflow_threads(options: ServerOptions) -> None:
    import tensorflow as tf

    try:
        if options.tf_intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(options.tf_intra_op_threads)
        if options.tf_inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(options.tf_inter_op_threads)
    except RuntimeError as err:  # TensorFlow already running in this process
        log.warning("TensorFlow thread settings not applied: %s", err)


def serve(options: ServerOptions) -> int:
    """Runs the server until SIGTERM or SIGINT, then shuts down gracefully.

    Returns:
        The process exit code (0).
    """
    server = ModelServer(options)
    server.start()
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0
