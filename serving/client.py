"""A gRPC client for the VAE, against TF Serving or `vae serve` alike.

Every call carries a deadline, retries with exponential backoff on UNAVAILABLE (all VAE
calls are pure, so retrying is safe), splits large arrays into requests under the message
limit, and raises `ServingError` with the gRPC code and message on failure.

Example:
    >>> with VAEClient("127.0.0.1:8500") as client:
    ...     images = client.generate(16, seed=7)   # (16, 28, 28, 1)
    ...     codes = client.encode(images)          # {"z_mean": ..., "z_log_var": ...}
    ...     digits = client.generate(labels=[0, 1, 2], seed=7)   # a label model
    ...     probabilities = client.classify(images)              # M2: (N, K)
"""

from __future__ import annotations

import dataclasses
import logging
import random
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import contract as C
from serving.errors import status_code_name
from serving.tensors import dtype_name, fill_tensor_proto, from_tensor_proto

log = logging.getLogger(__name__)


class ServingError(RuntimeError):
    """A failed call: the gRPC status code and the server's message.

    Attributes:
        code: a `grpc.StatusCode` (e.g. NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE).
        details: the server's message.
        method: the RPC that failed.
    """

    def __init__(self, code: grpc.StatusCode, details: str, method: str):
        super().__init__(f"{method} failed with {code.name}: {details}")
        self.code = code
        self.details = details
        self.method = method


@dataclasses.dataclass(frozen=True)
class TLSOptions:
    """Channel TLS: the CA to trust and, for mutual TLS, the client's key and certificate.

    Args:
        root_certificates: PEM CA bundle (None: the system's roots).
        private_key: PEM client key (mutual TLS only).
        certificate_chain: PEM client certificate chain (mutual TLS only).
        server_name: expected name on the server certificate, if it is not the target host.
    """

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_files(cls, ca_file=None, key_file=None, cert_file=None, server_name=None) -> TLSOptions:
        def read(path):
            return Path(path).read_bytes() if path else None

        return cls(read(ca_file), read(key_file), read(cert_file), server_name)


class VAEClient:
    """Calls the VAE's signatures over gRPC. Every call raises `ServingError` when the
    server refuses or fails it (after the retries on UNAVAILABLE).

    Args:
        target: `host:port` of TF Serving or `vae serve`.
        model_name: the served model's name.
        timeout: deadline of each attempt, in seconds.
        version: ask for this version (default: the latest loaded).
        version_label: ask for the version behind this label (exclusive with `version`).
        tls: TLS options, or None for a plaintext channel.
        max_retries: retries after UNAVAILABLE before giving up.
        backoff_seconds: first retry delay; it doubles each retry (with jitter).
        max_message_bytes: gRPC message limit both ways; requests are split to fit.
    """

    def __init__(
        self,
        target: str,
        model_name: str = C.MODEL_NAME,
        timeout: float = 10.0,
        *,
        version: int | None = None,
        version_label: str | None = None,
        tls: TLSOptions | None = None,
        max_retries: int = 3,
        backoff_seconds: float = 0.1,
        max_message_bytes: int = C.MAX_MESSAGE_BYTES,
    ):
        if version is not None and version_label is not None:
            raise ValueError("give version or version_label, not both")
        self.target, self.model_name, self.timeout = target, model_name, timeout
        self.version, self.version_label = version, version_label
        self.max_retries, self.backoff_seconds = max_retries, backoff_seconds
        self.max_message_bytes = max_message_bytes
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            credentials = grpc.ssl_channel_credentials(tls.root_certificates, tls.private_key, tls.certificate_chain)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._output_row_bytes: dict[str, int] = {}

    # === Signatures ===
    def generate(
        self, n: int | None = None, seed: int | Sequence[int] | None = None, temperature: float = 1.0,
        *, labels: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Draws `n` images (a label model: one image per label): z ~ N(0, temperature^2 I)
        from `seed`, decoded (with the label).

        The same seed gives the same images on any server. More than the contract's
        MAX_NUM_SAMPLES images are drawn in several requests, request i seeded `(seed, i)`.

        Args:
            n: number of images (a plain VAE); with `labels`, None or len(labels).
            seed: an int, a pair of ints, or None for a random seed.
            temperature: scale of the latent draws.
            labels: class labels in [0, K), for a label-conditioned model (CVAE on labels, M2).

        Returns:
            float32 array (n, H, W, C), image i of label i.

        Raises:
            ServingError: the server refused or failed the call (INVALID_ARGUMENT for a
                label outside [0, K) or labels sent to a plain VAE).
            ValueError: `n` is negative or missing, or differs from the number of labels.
        """
        return self.generate_with_latents(n, seed, temperature, outputs=(C.IMAGES,), labels=labels)[0]

    def generate_with_latents(
        self, n: int | None = None, seed=None, temperature: float = 1.0, outputs: Sequence[str] = (C.IMAGES, C.Z),
        *, labels: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, ...]:
        """Like `generate`, also returning the latents: (images (n, H, W, C), z (n, D)).

        Raises:
            ServingError: the server refused or failed the call.
            ValueError: `n` is negative or missing, or differs from the number of labels.
        """
        if labels is not None:
            labels = np.asarray(labels, np.int32).reshape(-1)
            if n is not None and n != len(labels):
                raise ValueError(f"n={n} but {len(labels)} labels: a label model draws one image per label")
            n = len(labels)
        if n is None:
            raise ValueError("give n (the number of images) or labels")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        first, second = _seed_pair(seed)
        rows = min(C.MAX_NUM_SAMPLES, self._rows_for(C.GENERATE, 0))

        def inputs(start: int, index: int) -> dict:
            common = {C.SEED: np.asarray([first, second + index], np.int64), C.TEMPERATURE: np.float32(temperature)}
            if labels is None:
                return {C.NUM_SAMPLES: np.int32(min(rows, n - start)), **common}
            return {C.LABELS: labels[start : start + rows], **common}

        results = [
            self.predict(C.GENERATE, inputs(start, index), outputs)
            for index, start in enumerate(range(0, max(n, 1), rows))
        ]
        return tuple(_join([r[k] for r in results]) for k in outputs)

    def complete(self, images, seed: int | Sequence[int] | None = None, temperature: float = 1.0) -> np.ndarray:
        """A half-conditioned CVAE's completions of (N, H, W, C) images in [0, 1]: the
        observed half as given, the other half drawn (its pixels in `images` are ignored).

        Large arrays go in several requests, request i seeded `(seed, i)`.

        Raises:
            ServingError: the server refused or failed the call (FAILED_PRECONDITION for a
                model without `complete`).
        """
        images = np.asarray(images, np.float32)
        if images.ndim < 2:
            raise ValueError(f"{C.IMAGES} must have a batch axis, got shape {images.shape}")
        first, second = _seed_pair(seed)
        rows = self._rows_for(C.COMPLETE, 4 * int(np.prod(images.shape[1:])))
        results = [
            self.predict(
                C.COMPLETE,
                {C.IMAGES: images[start : start + rows], C.SEED: np.asarray([first, second + index], np.int64),
                 C.TEMPERATURE: np.float32(temperature)},
            )
            for index, start in enumerate(range(0, max(len(images), 1), rows))
        ]
        return _join([r[C.IMAGES] for r in results])

    # Row signatures: (N, ...) arrays in, N rows out; split under the message limit.
    # `labels` (one per row) go with a label CVAE's encode, decode, reconstruct and
    # log_likelihood, and with M2's decode.
    def encode(self, images, labels=None) -> dict[str, np.ndarray]:
        """q(z|x) of (N, H, W, C) images in [0, 1]: {"z_mean": (N, D), "z_log_var": (N, D)}."""
        return self._rows(C.ENCODE, C.IMAGES, images, labels)

    def decode(self, z, labels=None) -> np.ndarray:
        """The decoder's mean image (N, H, W, C) of each of (N, D) latent vectors."""
        return self._rows(C.DECODE, C.Z, z, labels)[C.IMAGES]

    def reconstruct(self, images, labels=None) -> np.ndarray:
        """decode(z_mean) (N, H, W, C) of each of (N, H, W, C) images in [0, 1]."""
        return self._rows(C.RECONSTRUCT, C.IMAGES, images, labels)[C.IMAGES]

    def log_likelihood(self, images, labels=None) -> np.ndarray:
        """IWAE estimate of log p(x) (N,) in nats of (N, H, W, C) images in [0, 1] (lower
        means more anomalous)."""
        return self._rows(C.LOG_LIKELIHOOD, C.IMAGES, images, labels)[C.LOG_LIKELIHOOD_KEY]

    def classify(self, images) -> np.ndarray:
        """M2's class probabilities q(y|x) (N, K) of (N, H, W, C) images in [0, 1].

        Raises:
            ServingError: FAILED_PRECONDITION when the model has no classifier.
        """
        return self._rows(C.CLASSIFY, C.IMAGES, images)[C.PROBABILITIES]

    def num_classes(self) -> int | None:
        """K of the served model when its signatures show it (the width of `classify`'s
        probabilities), else None (class names and K travel in the export's description,
        `assets.extra/serving_contract.json` (`serving.description`), which TF Serving's
        metadata does not carry)."""
        signature = self.metadata()["signatures"].get(C.CLASSIFY)
        if signature is None or C.PROBABILITIES not in signature["outputs"]:
            return None
        width = signature["outputs"][C.PROBABILITIES]["shape"][-1]
        return int(width) if width > 0 else None

    # === Model service ===
    def metadata(self) -> dict:
        """The served version and its signatures.

        Returns:
            {"model_name", "version", "signatures": {name: {"inputs": {key: {"dtype",
            "shape"}}, "outputs": {...}, "method_name"}}}; -1 in a shape is any size.

        Raises:
            ServingError: the server refused or failed the call.
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[C.SIGNATURE_DEF_FIELD])
        self._fill_spec(request.model_spec)
        response = self._call(self._predict.GetModelMetadata, request, "GetModelMetadata")
        definitions = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[C.SIGNATURE_DEF_FIELD].Unpack(definitions)

        def tensors(infos) -> dict:
            return {
                k: {"dtype": dtype_name(v.dtype), "shape": [int(d.size) for d in v.tensor_shape.dim]}
                for k, v in sorted(infos.items())
            }

        signatures = {
            name: {"inputs": tensors(d.inputs), "outputs": tensors(d.outputs), "method_name": d.method_name}
            for name, d in sorted(definitions.signature_def.items())
            if not name.startswith("__")
        }
        return {"model_name": response.model_spec.name, "version": response.model_spec.version.value,
                "signatures": signatures}

    def status(self) -> dict[int, dict]:
        """The state of every version the server knows (or of `version` if set).

        Returns:
            {version: {"state": "AVAILABLE", "error_code": "OK", "error_message": ""}}.

        Raises:
            ServingError: the server refused or failed the call.
        """
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        response = self._call(self._models.GetModelStatus, request, "GetModelStatus")
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return {
            s.version: {
                "state": state_name(s.state),
                "error_code": status_code_name(s.status.error_code),
                "error_message": s.status.error_message,
            }
            for s in response.model_version_status
        }

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.2) -> int:
        """Blocks until a version is AVAILABLE (server up, model loaded).

        Returns:
            The newest available version.

        Raises:
            TimeoutError: nothing became available within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                ready = [v for v, s in self.status().items() if s["state"] == "AVAILABLE"]
                if ready:
                    return max(ready)
            except ServingError as err:
                last = err
            time.sleep(interval)
        raise TimeoutError(f"no version of {self.model_name!r} available at {self.target} after {timeout}s: {last}")

    # === Plumbing ===
    def predict(self, signature: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] = ()) -> dict:
        """One Predict call: numpy inputs by key -> numpy outputs by key.

        Args:
            signature: signature name ("" means serving_default).
            inputs: every input of the signature, already of its dtype.
            outputs: restrict the outputs (TF Serving's `output_filter`); empty: all.

        Raises:
            ServingError: the server refused or failed the call.
        """
        request = predict_pb2.PredictRequest(output_filter=list(outputs))
        self._fill_spec(request.model_spec)
        request.model_spec.signature_name = signature
        for key, value in inputs.items():
            fill_tensor_proto(request.inputs[key], value)
        response = self._call(self._predict.Predict, request, f"Predict({signature or C.DEFAULT_SIGNATURE})")
        return {k: from_tensor_proto(v, writable=True) for k, v in response.outputs.items()}

    def _rows(self, signature: str, key: str, array, labels=None) -> dict[str, np.ndarray]:
        array = np.asarray(array, np.float32)
        if array.ndim < 2:
            raise ValueError(f"{key} must have a batch axis, got shape {array.shape}")
        if labels is not None:
            labels = np.asarray(labels, np.int32).reshape(-1)
            if len(labels) != len(array):
                raise ValueError(f"{len(labels)} labels for {len(array)} rows of {key}: one label per row")
        row_bytes = 4 * int(np.prod(array.shape[1:])) + (4 if labels is not None else 0)
        rows = self._rows_for(signature, row_bytes)

        def inputs(i: int) -> dict:
            part = {key: array[i : i + rows]}
            return part if labels is None else {**part, C.LABELS: labels[i : i + rows]}

        results = [self.predict(signature, inputs(i)) for i in range(0, max(len(array), 1), rows)]
        return {k: _join([r[k] for r in results]) for k in results[0]}

    def _rows_for(self, signature: str, input_row_bytes: int) -> int:
        """Rows per request so that both the request and its response fit the limit."""
        if signature not in self._output_row_bytes:
            found = self._response_row_bytes(signature)
            if found is None:  # not known yet (no model loaded?): the call itself will tell
                return C.rows_per_request(input_row_bytes, self.max_message_bytes)
            self._output_row_bytes[signature] = found
        return C.rows_per_request(max(input_row_bytes, self._output_row_bytes[signature]), self.max_message_bytes)

    def _response_row_bytes(self, signature: str) -> int | None:
        """Bytes of one output row, from the served signature's metadata (cached)."""
        try:
            outputs = self.metadata()["signatures"][signature]["outputs"]
        except (ServingError, KeyError):
            return None
        return sum(4 * int(np.prod([max(d, 1) for d in o["shape"][1:]])) for o in outputs.values())

    def _fill_spec(self, spec) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        elif self.version_label is not None:
            spec.version_label = self.version_label

    def _call(self, method, request, name: str):
        for attempt in range(self.max_retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as err:
                code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.max_retries:
                    delay = self.backoff_seconds * 2**attempt * (0.5 + random.random())
                    log.debug("%s UNAVAILABLE, retry %d in %.2fs", name, attempt + 1, delay)
                    time.sleep(delay)
                    continue
                raise ServingError(code, err.details() or "", name) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VAEClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """The parts of a split call, in order (no copy for a single part)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _seed_pair(seed) -> tuple[int, int]:
    if seed is None:
        return secrets.randbits(62), 0
    if isinstance(seed, (int, np.integer)):
        return int(seed), 0
    first, second = (int(s) for s in seed)
    return first, second
