"""One loaded version of an exported model: its signatures, request validation and warm-up.

Loaded with `tf.saved_model.load`; nothing here knows the Keras model. Validation follows
TF Serving's `predict_util.cc` (same gRPC codes, messages saying what was expected).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving import contract as C
from serving.description import ExportDescription
from serving.errors import ExportError, RequestError, invalid, status_code_of, tf_error_message
from serving.layout import SERVE_TAG, read_signature_defs
from serving.tensors import dtype_name, from_tensor_proto, shape_of

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    dtype: int  # DataType enum
    shape: tuple[int, ...] | None  # -1 for any size; None for unknown rank


def _flat_caller(function):
    """A fast way to call a loaded signature with validated tensors by key.

    `ConcreteFunction.__call__` re-checks and re-packs structured arguments on every call
    (about a third of a small model's call time). The inputs here are already checked
    against the SignatureDef, so the flat call is used when this TensorFlow has it, with
    the public call as the fallback.
    """
    keywords = getattr(function, "_arg_keywords", None)
    call_flat = getattr(function, "_call_flat", None)
    captured = getattr(function, "captured_inputs", None)
    if keywords is None or call_flat is None or captured is None:
        return lambda tensors: function(**tensors)
    keywords = [k.decode() if isinstance(k, bytes) else k for k in keywords]
    return lambda tensors: call_flat([tensors[k] for k in keywords], captured)


@dataclasses.dataclass(frozen=True)
class Signature:
    """A callable signature and what it accepts."""

    name: str
    inputs: dict[str, InputSpec]
    outputs: tuple[str, ...]
    function: object  # the loaded ConcreteFunction
    call: object = None  # tensors by key -> outputs by key (see _flat_caller)

    def describe_inputs(self) -> str:
        return ", ".join(
            f"{k}: {dtype_name(s.dtype)} {list(s.shape) if s.shape is not None else '?'}"
            for k, s in sorted(self.inputs.items())
        )


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated request: numpy inputs and the output aliases to return."""

    signature: Signature
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]

    @property
    def rows(self) -> int:
        """Rows this request adds to a batch (dim 0 of its row input; num_samples, or the
        number of labels, of a generate request; the images of a complete request)."""
        if self.signature.name in C.ANY_ROW_SIGNATURES:
            return int(next(iter(self.inputs.values())).shape[0])
        for key in (C.LABELS, C.IMAGES):
            if key in self.inputs:
                return int(np.shape(self.inputs[key])[0])
        return int(np.sum(self.inputs.get(C.NUM_SAMPLES, 0)))


class Servable:
    """A loaded version: `prepare` validates a PredictRequest, `run` executes it.

    Args:
        name: the model name.
        version: the version number.
        path: the version folder.
    """

    def __init__(self, name: str, version: int, path: Path):
        self.name = name
        self.version = version
        self.path = Path(path)
        self.signature_defs = read_signature_defs(self.path)
        self.description = _read_description(self.path)
        # K of a label-conditioned model (its labels are checked before running), or None.
        self.num_classes: int | None = self.description.num_classes if self.description else None
        self._loaded = tf.saved_model.load(str(self.path), tags=[SERVE_TAG])
        self.signatures: dict[str, Signature] = {}
        for key, function in self._loaded.signatures.items():
            definition = self.signature_defs[key]
            inputs = {
                alias: InputSpec(info.dtype, _shape(info.tensor_shape))
                for alias, info in definition.inputs.items()
            }
            outputs = tuple(sorted(definition.outputs))
            self.signatures[key] = Signature(key, inputs, outputs, function, _flat_caller(function))

    # === Requests ===
    def prepare(self, request: predict_pb2.PredictRequest) -> Prepared:
        """Validates a request against its signature and the contract's limits.

        Raises:
            RequestError: FAILED_PRECONDITION for an unknown signature (e.g. `classify` of a
                plain VAE), INVALID_ARGUMENT for wrong input names, dtypes, shapes, output
                aliases or limits, for labels outside [0, K) and for a labels count that
                is not the images' (or z's).
        """
        key = request.model_spec.signature_name or C.DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{key}" not found. Available: {sorted(self.signatures)}.',
            )
        outputs = _output_aliases(signature, request.output_filter)
        _check_input_names(signature, request.inputs.keys())
        inputs = {alias: _read_input(signature, alias, proto) for alias, proto in request.inputs.items()}
        message = C.limit_error(inputs)
        if message is None and C.LABELS in inputs and self.num_classes is not None:
            message = C.label_error(inputs[C.LABELS], self.num_classes)
        if message is not None:
            raise invalid(message)
        return Prepared(signature, inputs, outputs)

    def run(
        self, signature: Signature, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Calls a signature on numpy inputs; returns its outputs (or only `outputs`) as numpy
        arrays over the result tensors' memory.

        Raises:
            RequestError: the TensorFlow error's code and message (e.g. a failed in-graph check).
        """
        try:
            result = signature.call({k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.OpError as err:
            raise RequestError(status_code_of(err), tf_error_message(err)) from None
        return {k: np.asarray(result[k]) for k in (outputs or result)}  # no copy, unlike .numpy()

    def warm_up(self) -> int:
        """Replays `assets.extra/tf_serving_warmup_requests` (TF Serving does the same).

        Returns:
            The number of requests replayed.
        """
        path = self.path / C.ASSETS_EXTRA / C.WARMUP_FILE
        if not path.is_file():
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(str(path)):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if entry.WhichOneof("log_type") != "predict_log":
                continue
            prepared = self.prepare(entry.predict_log.request)
            self.run(prepared.signature, prepared.inputs)
            count += 1
        return count


def _read_description(path: Path) -> ExportDescription | None:
    """The version's description (None if it has none or it is unreadable: the in-graph
    checks still hold)."""
    try:
        return ExportDescription.read(path)
    except ExportError as err:
        log.warning("serving %s without its description: %s", path, err)
        return None


def _shape(proto) -> tuple[int, ...] | None:
    return None if proto.unknown_rank else tuple(int(d.size) for d in proto.dim)


def _output_aliases(signature: Signature, output_filter: Sequence[str]) -> tuple[str, ...]:
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(signature.outputs)}}}."
            )
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return tuple(seen) or signature.outputs


def _check_input_names(signature: Signature, sent: Sequence[str]) -> None:
    sent_set, expected = set(sent), set(signature.inputs)
    if sent_set == expected:
        return
    expects = f"Signature {signature.name!r} expects {signature.describe_inputs()}."
    if len(sent_set) != len(expected):
        raise invalid(
            f"input size does not match signature: {len(sent_set)}!={len(expected)} "
            f"len({{{','.join(sorted(sent_set))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent_set - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent_set))}}}. {expects}"
        )
    raise invalid(
        f"input tensor alias not found in signature: {','.join(sorted(sent_set - expected))}. "
        f"Inputs expected to be in the set {{{','.join(sorted(expected))}}}. {expects}"
    )


def _read_input(signature: Signature, alias: str, proto) -> np.ndarray:
    spec = signature.inputs[alias]
    if proto.dtype != spec.dtype:
        raise invalid(
            f"input {alias!r} of signature {signature.name!r} has dtype {dtype_name(proto.dtype)}; "
            f"expected {dtype_name(spec.dtype)}"
        )
    shape = shape_of(proto)
    if spec.shape is not None and (
        shape is None
        or len(shape) != len(spec.shape)
        or any(e not in (-1, s) for s, e in zip(shape, spec.shape))
    ):
        raise invalid(
            f"input {alias!r} of signature {signature.name!r} has shape "
            f"{list(shape) if shape is not None else '?'}; expected {list(spec.shape)} (-1: any size)"
        )
    message = C.rows_error(alias, shape[0]) if shape else None  # before any allocation
    if message is not None:
        raise invalid(message)
    try:
        return from_tensor_proto(proto, shape=shape)
    except ValueError as err:
        raise invalid(f"input {alias!r}: {err}") from None
