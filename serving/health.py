"""The standard gRPC health-checking protocol (`grpc.health.v1.Health`), server and client side.

The messages are built from a descriptor at import time instead of generated code, so the
service works with whichever protobuf runtime the environment pins (the generated
`grpc_health` module refuses runtimes older than the one it was generated with). It is
wire-compatible with `grpc_health_probe`, Kubernetes gRPC probes and `grpc_health.v1`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE_NAME = "grpc.health.v1.Health"
UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {UNKNOWN: "UNKNOWN", SERVING: "SERVING", NOT_SERVING: "NOT_SERVING", SERVICE_UNKNOWN: "SERVICE_UNKNOWN"}


def _message_classes():
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="serving/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    enum = response.enum_type.add(name="ServingStatus")
    for number, name in STATUS_NAMES.items():
        enum.value.add(name=name, number=number)
    response.field.add(
        name="status", number=1, type=F.TYPE_ENUM, label=F.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()  # private: no clash with grpc_health if imported
    pool.Add(proto)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.health.v1.{name}"))
        for name in ("HealthCheckRequest", "HealthCheckResponse")
    )


HealthCheckRequest, HealthCheckResponse = _message_classes()


class HealthService:
    """Serving status per service name ("" is the whole server); Check and Watch RPCs."""

    def __init__(self):
        self._statuses: dict[str, int] = {}
        self._changed = threading.Condition()
        self._shutting_down = False

    def set(self, service: str, status: int) -> None:
        with self._changed:
            if not self._shutting_down:
                self._statuses[service] = status
                self._changed.notify_all()

    def enter_graceful_shutdown(self) -> None:
        """Every service reports NOT_SERVING from now on."""
        with self._changed:
            self._statuses = {s: NOT_SERVING for s in self._statuses}
            self._shutting_down = True
            self._changed.notify_all()

    def check(self, request, context):
        status = self._statuses.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return HealthCheckResponse(status=status)

    def watch(self, request, context) -> Iterator:
        last = None
        while context.is_active():
            with self._changed:
                status = self._statuses.get(request.service, SERVICE_UNKNOWN)
                if status == last:
                    self._changed.wait(timeout=1.0)
                    continue
            last = status
            yield HealthCheckResponse(status=status)
            if self._shutting_down:
                return

    def add_to_server(self, server: grpc.Server) -> None:
        handlers = {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.check, HealthCheckRequest.FromString, HealthCheckResponse.SerializeToString
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self.watch, HealthCheckRequest.FromString, HealthCheckResponse.SerializeToString
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def check(channel: grpc.Channel, service: str = "", timeout: float = 5.0) -> str:
    """Asks a server's health service; returns "SERVING", "NOT_SERVING", ...

    Raises:
        grpc.RpcError: the server is unreachable or does not know `service` (NOT_FOUND).
    """
    call = channel.unary_unary(
        f"/{SERVICE_NAME}/Check",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )
    return STATUS_NAMES[call(HealthCheckRequest(service=service), timeout=timeout).status]
