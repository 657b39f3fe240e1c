"""Prometheus metrics under TF Serving's own names, and the monitoring config that enables them.

TF Serving exports (tensorflow_serving/servables/tensorflow/util.cc, prometheus_exporter.cc):

- `:tensorflow:serving:request_count{model_name, status}`: a counter of Predict requests by
  status code name ("OK", "INVALID_ARGUMENT", ...), written without a `_total` suffix;
- `:tensorflow:serving:request_latency{model_name, API, entrypoint}`: a histogram of the
  wall time of successful requests in microseconds, buckets 10 * 1.8^i (i < 33), with
  API "Predict" / entrypoint "GRPC" for gRPC and API "predict" / entrypoint "REST" for REST.

Dashboards built on TF Serving query those sample names, so the page keeps them exactly.
The metrics live in prometheus_client objects (one private registry per server); the page
is written from that registry in TF Serving's text layout (prometheus_client's own writer
would rename the counter to `..._total`). The local server adds one metric of its own,
`:vae:serving:batching:queue_depth{queue, unit}` (queued requests and rows per batching
queue, read when the page is scraped); TF Serving has no such metric.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.utils import floatToGoString

from core.config import ConfigBase, ConfigError, read_config_file, require

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
QUEUE_DEPTH = ":vae:serving:batching:queue_depth"
# monitoring::Buckets::Exponential(10, 1.8, 33): microseconds, about 10 us to 20 minutes.
LATENCY_BUCKETS_MICROS = tuple(10 * 1.8**i for i in range(33))
# Front doors, as TF Serving labels them (API, entrypoint).
GRPC_PREDICT = ("Predict", "GRPC")
REST_PREDICT = ("predict", "REST")


# === Config ===
@dataclasses.dataclass(frozen=True)
class MonitoringOptions(ConfigBase):
    """TF Serving's `MonitoringConfig` (`--monitoring_config_file`).

    Args:
        prometheus_enable: serve the Prometheus page on the REST port.
        prometheus_path: where (TF Serving's default: /monitoring/prometheus/metrics).
    """

    prometheus_enable: bool = False
    prometheus_path: str = DEFAULT_PATH

    def __post_init__(self) -> None:
        require(self, "prometheus_path", self.prometheus_path.startswith("/"), "must start with /")

    @classmethod
    def from_text(cls, text: str) -> MonitoringOptions:
        """Parses a MonitoringConfig text proto (`prometheus_config { enable: true path: "..." }`).

        Raises:
            ConfigError: the text is not a MonitoringConfig (the message says where).
        """
        from google.protobuf import text_format

        config = _monitoring_config_class()()
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as err:
            raise ConfigError(f"not a MonitoringConfig text proto: {err}") from None
        prometheus = config.prometheus_config
        return cls(prometheus_enable=prometheus.enable, prometheus_path=prometheus.path or DEFAULT_PATH)

    @classmethod
    def from_file(cls, path: str | Path) -> MonitoringOptions:
        """Reads `--monitoring-config-file` (e.g. serving/monitoring.config).

        Raises:
            ConfigError: the file cannot be read or parsed (named with the file).
        """
        return read_config_file(path, "monitoring config file", cls.from_text)


def _monitoring_config_class():
    """tensorflow.serving.MonitoringConfig (monitoring_config.proto, not shipped in the
    tensorflow-serving-api wheel), built from its two-message definition."""
    global _MONITORING_CONFIG
    if _MONITORING_CONFIG is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        F = descriptor_pb2.FieldDescriptorProto
        file = descriptor_pb2.FileDescriptorProto(
            name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
        )
        prometheus = file.message_type.add(name="PrometheusConfig")
        prometheus.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
        prometheus.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        monitoring = file.message_type.add(name="MonitoringConfig")
        monitoring.field.add(
            name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
            type_name=".tensorflow.serving.PrometheusConfig",
        )
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        descriptor = pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
        _MONITORING_CONFIG = message_factory.GetMessageClass(descriptor)
    return _MONITORING_CONFIG


_MONITORING_CONFIG = None


# === Metrics ===
class _QueueDepthCollector:
    """Reads the batching queues' depth when the page is scraped (no cost per request)."""

    def __init__(self, depths: Callable[[], Mapping[str, tuple[int, int]]]):
        self._depths = depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            QUEUE_DEPTH, "Requests and rows waiting in each batching queue.", labels=["queue", "unit"]
        )
        for queue, (requests, rows) in sorted(self._depths().items()):
            family.add_metric([queue, "requests"], requests)
            family.add_metric([queue, "rows"], rows)
        yield family


class ServingMetrics:
    """The server's request counts and latencies (one private registry per server).

    Args:
        queue_depths: () -> {queue: (queued requests, queued rows)}, or None without batching.
    """

    def __init__(self, queue_depths: Callable[[], Mapping[str, tuple[int, int]]] | None = None):
        self.registry = CollectorRegistry(auto_describe=False)
        self._count = Counter(
            REQUEST_COUNT, "The total number of requests.", ["model_name", "status"], registry=self.registry
        )
        self._latency = Histogram(
            REQUEST_LATENCY,
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=LATENCY_BUCKETS_MICROS,
            registry=self.registry,
        )
        if queue_depths is not None:
            self.registry.register(_QueueDepthCollector(queue_depths))

    def record(self, model_name: str, door: tuple[str, str], status: str, seconds: float) -> None:
        """Counts one Predict request; a successful one also adds its latency (as TF Serving).

        Args:
            model_name: the model the request named.
            door: (API, entrypoint), e.g. `GRPC_PREDICT` or `REST_PREDICT`.
            status: the status code name ("OK", "NOT_FOUND", ...).
            seconds: the request's wall time.
        """
        self._count.labels(model_name, status).inc()
        if status == "OK":
            self._latency.labels(model_name, *door).observe(seconds * 1e6)

    def page(self) -> bytes:
        """The Prometheus text page, with TF Serving's sample names (see the module doc)."""
        lines: list[str] = []
        for family in self.registry.collect():
            kind = "untyped" if family.type == "unknown" else family.type
            doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
            lines.append(f"# HELP {family.name} {doc}")
            lines.append(f"# TYPE {family.name} {kind}")
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                name = family.name if sample.name == f"{family.name}_total" else sample.name
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels.items())
                lines.append(f"{name}{{{labels}}} {floatToGoString(sample.value)}" if labels
                             else f"{name} {floatToGoString(sample.value)}")
        return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
