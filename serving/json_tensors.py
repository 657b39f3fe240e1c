"""JSON <-> tensors for the REST API, with TF Serving's formats and messages (json_tensor.cc).

Requests: `{"signature_name": ..., "instances": [...]}` (row format: one item per row, an
object per row when the signature has several inputs, the bare value when it has one) or
`{"inputs": ...}` (columnar: an object of named tensors, or the bare tensor for a single
input). `{"b64": "..."}` is a binary value of a DT_STRING tensor. NaN and Infinity are
accepted, as TF Serving does. Answers: `{"predictions": ...}` for the row format,
`{"outputs": ...}` for the columnar one; the name is left out when there is one output.

Numbers go through numpy in one step when the JSON is a regular, well-typed nested list;
anything else takes the element-by-element walk, which finds TF Serving's error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping

import numpy as np
import orjson
from tensorflow.core.framework import types_pb2

from serving.dtypes import NUMPY_OF_DTYPE as _NUMPY
from serving.errors import invalid

_FLOATS = (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF)
_MAX_SHOWN = 200  # characters of a JSON value quoted in an error message
BYTES_SUFFIX = "_bytes"  # output tensors written as {"b64": ...}


def type_name(dtype: int) -> str:
    """TensorFlow's DataTypeString: "float", "int32", "string", ..."""
    return types_pb2.DataType.Name(dtype)[3:].lower() if dtype in types_pb2.DataType.values() else str(dtype)


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _dense_shape(value) -> tuple[int, ...]:
    """The shape JSON nesting declares, following first elements (GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


# === JSON -> numpy ===
def to_array(value, dtype: int) -> np.ndarray:
    """One tensor from its JSON value (nested lists, a scalar, or b64 objects for strings).

    Raises:
        RequestError: INVALID_ARGUMENT with TF Serving's message (ragged lists, wrong JSON
            types, numbers that do not fit the dtype without loss).
    """
    shape = _dense_shape(value)
    target = _NUMPY.get(dtype)
    if target is not None and not (isinstance(value, list) and 0 in shape):
        try:
            array = np.asarray(value)
        except (ValueError, OverflowError):
            array = None
        if array is not None and array.shape == shape and _kind_fits(array.dtype.kind, dtype):
            _check_lossless(array, dtype)
            return array.astype(target, copy=False)
    flat: list = []
    _walk(value, 0, shape, dtype, flat)
    if dtype == types_pb2.DT_STRING:
        return np.array(flat, dtype=object).reshape(shape)
    if target is None:
        raise invalid(f"Conversion of JSON Value: {_show(value)} to type: {type_name(dtype)} is not supported")
    array = np.asarray(flat) if flat else np.zeros(0)
    _check_lossless(array, dtype)
    return array.astype(target).reshape(shape)


def _kind_fits(kind: str, dtype: int) -> bool:
    if dtype in _FLOATS:
        return kind in "fiu"
    if dtype == types_pb2.DT_BOOL:
        return kind == "b"
    return kind in "iu"


def _check_lossless(array: np.ndarray, dtype: int) -> None:
    """TF Serving refuses numbers that a float type cannot hold (IsLosslessDecimal) and
    integers outside the integer type."""
    if array.size == 0:
        return
    if dtype in _FLOATS:
        info = np.finfo(_NUMPY[dtype])
        if array.dtype.kind == "f":
            finite = array[np.isfinite(array)]
            bad = finite[np.abs(finite) > info.max]
        else:
            bad = array[np.abs(array) > 2 ** (info.nmant + 1) - 1]
        if bad.size:
            raise invalid(f"Cannot convert JSON value: {bad.flat[0]!r} to {type_name(dtype)} without loss of precision.")
    elif dtype != types_pb2.DT_BOOL:
        info = np.iinfo(_NUMPY[dtype])
        bad = array[(array < info.min) | (array > info.max)]
        if bad.size:
            raise invalid(f"JSON Value: {bad.flat[0]} Type: Number is not of expected type: {type_name(dtype)}")


def _walk(value, level: int, shape: tuple[int, ...], dtype: int, out: list) -> None:
    """FillTensorProto: every leaf at depth len(shape), every list of its level's size."""
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid(
                f"JSON Value: {_show(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        out.append(_leaf(value, dtype))
        return
    if level >= len(shape):
        raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _walk(item, level + 1, shape, dtype, out)


def _leaf(value, dtype: int):
    mismatch = invalid(
        f"JSON Value: {_show(value)} Type: {_json_type(value)} is not of expected type: {type_name(dtype)}"
    )
    if dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return value.encode()
        if not _is_b64(value):
            raise invalid(f"JSON Value: {_show(value)} not formatted correctly for base64 data")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid("Unable to base64 decode") from None
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise mismatch
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise mismatch
    if dtype not in _FLOATS and not isinstance(value, int):
        raise mismatch
    return value


# === Request bodies ===
def parse_body(body: bytes) -> dict:
    """The request's JSON object (ParseJson).

    Raises:
        RequestError: INVALID_ARGUMENT for an empty body, bad JSON or a non-object.
    """
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, too deep
        raise invalid(f"JSON Parse error: {err}") from None
    if not isinstance(document, dict):
        raise invalid(f"JSON Value: {_show(document)} Is not object")
    return document


def signature_name(document: dict) -> str:
    """The optional `signature_name` ("" when absent)."""
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(
            f"JSON Value: {_show(document)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def read_inputs(document: dict, inputs: Mapping[str, int]) -> tuple[dict[str, np.ndarray], bool]:
    """The input tensors of a predict body (FillPredictRequestFromJson).

    Args:
        document: the parsed body.
        inputs: the signature's input dtypes by name.

    Returns:
        (tensors by input name, True for the row format / False for the columnar one).

    Raises:
        RequestError: INVALID_ARGUMENT with TF Serving's message.
    """
    has_rows, has_columns = "instances" in document, "inputs" in document
    if has_rows and has_columns:
        raise invalid(
            f"JSON Value: {_show(document)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if has_rows:
        return _read_rows(document, inputs), True
    if has_columns:
        return _read_columns(document["inputs"], inputs), False
    raise invalid("Missing 'inputs' or 'instances' key")


def _read_columns(value, inputs: Mapping[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(inputs) > 1:
            raise invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        ((name, dtype),) = inputs.items()
        return {name: to_array(value, dtype)}
    tensors = {}
    for name, dtype in sorted(inputs.items()):
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = to_array(value[name], dtype)
    return tensors


def _read_rows(document: dict, inputs: Mapping[str, int]) -> dict[str, np.ndarray]:
    rows = document["instances"]
    if not isinstance(rows, list):
        raise invalid(f"JSON Value: {_show(document)} Excepting 'instances' to be an list/array")
    if not rows:
        raise invalid(f"JSON Value: {_show(document)} No values in 'instances' array")
    named = isinstance(rows[0], dict) and not _is_b64(rows[0])
    if not named:
        if len(inputs) > 1:
            raise invalid(
                "instances is a plain list, but expecting list of objects as multiple input tensors "
                "required as per tensorinfo_map"
            )
        ((name, dtype),) = inputs.items()
        for i, row in enumerate(rows):
            if isinstance(row, dict) and not _is_b64(row):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
        return {name: _stack(rows, name, dtype, keyed=False)}
    names = set(inputs)
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or _is_b64(row):
            raise invalid(f"Expecting object but got list at item {i} of input list")
        for key in row:
            if key not in names:
                raise invalid(
                    f"Failed to process element: {i} key: {key} of 'instances' list. Error: "
                    f"INVALID_ARGUMENT: JSON object: does not have named input: {key}"
                )
        if set(row) != names:
            raise invalid(
                f"Failed to process element: {i} of 'instances' list. JSON object: {_show(row)} "
                f"keys must be equal to: {','.join(sorted(names))}"
            )
    return {name: _stack([row[name] for row in rows], name, dtype, keyed=True) for name, dtype in inputs.items()}


def _stack(items: list, name: str, dtype: int, keyed: bool) -> np.ndarray:
    """The rows of one input as one tensor, rows on axis 0 (AddInstanceItem for each)."""
    try:
        return to_array(items, dtype)  # the whole column at once when it is regular
    except Exception:  # noqa: BLE001 - find the row and TF Serving's message below
        pass
    first_shape = None
    arrays = []
    for i, item in enumerate(items):
        where = f"Failed to process element: {i}{f' key: {name}' if keyed else ''} of 'instances' list. Error: "
        try:
            array = to_array(item, dtype)
        except Exception as err:  # RequestError
            raise invalid(where + f"INVALID_ARGUMENT: {getattr(err, 'message', err)}") from None
        if first_shape is None:
            first_shape = array.shape
        elif array.size != math.prod(first_shape):
            raise invalid(where + f"INVALID_ARGUMENT: Expecting tensor size: {math.prod(first_shape)} but got: {array.size}")
        elif array.shape != first_shape:
            raise invalid(
                where + f"INVALID_ARGUMENT: Expecting shape [{','.join(map(str, first_shape))}] but got: "
                f"[{','.join(map(str, array.shape))}]"
            )
        arrays.append(array)
    return np.stack(arrays)


# === numpy -> JSON ===
def predict_body(outputs: Mapping[str, np.ndarray], rows: bool) -> bytes:
    """The answer to a predict request: `predictions` (row format) or `outputs` (columnar).

    Raises:
        RequestError: INVALID_ARGUMENT when the row format cannot hold the outputs (an output
            without rows, or outputs with different row counts), as TF Serving does.
    """
    names = sorted(outputs)
    outputs = {n: _strings(n, a) if a.dtype == object else a for n, a in outputs.items()}
    if not rows:
        value = outputs[names[0]] if len(names) == 1 else {n: outputs[n] for n in names}
        return _dumps({"outputs": value})
    batch = None
    for name in names:
        if np.ndim(outputs[name]) == 0:  # (a list of strings has its rows too)
            raise invalid(f"Tensor name: {name} has no shape information ")
        size = np.shape(outputs[name])[0]
        if batch is not None and size != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch}")
        batch = size
    if len(names) == 1:
        return _dumps({"predictions": outputs[names[0]]})
    return _dumps({"predictions": [{n: outputs[n][i] for n in names} for i in range(batch or 0)]})


def _dumps(document) -> bytes:
    """orjson for finite numbers (about 7x faster than json here); the json module when a
    tensor holds NaN or Infinity, written as TF Serving writes them."""
    if all(a.dtype.kind != "f" or np.isfinite(a).all() for a in _arrays(document)):
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(document, default=np.ndarray.tolist, separators=(",", ":")).encode()


def _arrays(document) -> list[np.ndarray]:
    if isinstance(document, np.ndarray):
        return [document]
    if isinstance(document, dict):
        return [a for v in document.values() for a in _arrays(v)]
    if isinstance(document, list):
        return [a for v in document for a in _arrays(v)]
    return []


def _strings(name: str, array: np.ndarray) -> list:
    """A DT_STRING output as JSON values: {"b64": ...} for `*_bytes` names, else text."""
    if name.endswith(BYTES_SUFFIX):
        encode = lambda b: {"b64": base64.b64encode(b).decode()}  # noqa: E731
    else:
        encode = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else b  # noqa: E731
    return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else array.tolist()


def error_body(message: str) -> bytes:
    """`{"error": "<message>"}`, TF Serving's error answer."""
    return orjson.dumps({"error": message})
