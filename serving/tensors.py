"""numpy <-> TensorProto conversions for the gRPC API, shared by the server and the client.

`tensor_content` (raw little-endian bytes) is the fast path both ways; protos that carry
typed fields (`float_val`, ...; TF Serving answers that way) fall back to `tf.make_ndarray`.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.contract import MAX_MESSAGE_BYTES
from serving.dtypes import DTYPE_OF_NUMPY, NUMPY_OF_DTYPE


def dtype_enum(dtype: str | np.dtype) -> int:
    """The `DataType` enum of a numpy dtype (or dtype name)."""
    np_dtype = np.dtype(dtype)
    if np_dtype not in DTYPE_OF_NUMPY:
        raise TypeError(f"dtype {np_dtype} has no TensorProto fast path")
    return DTYPE_OF_NUMPY[np_dtype]


def dtype_name(enum: int) -> str:
    """`DT_FLOAT` and friends, for messages."""
    return types_pb2.DataType.Name(enum) if enum in types_pb2.DataType.values() else str(enum)


def shape_of(proto: tensor_pb2.TensorProto) -> tuple[int, ...] | None:
    """The shape a TensorProto declares, or None when it declares an unknown rank."""
    if proto.tensor_shape.unknown_rank:
        return None
    return tuple([d.size for d in proto.tensor_shape.dim])


def fill_tensor_proto(proto: tensor_pb2.TensorProto, array) -> tensor_pb2.TensorProto:
    """Writes a numpy array (or scalar) into `proto` (e.g. a request's map entry) in place.

    Raises:
        TypeError: the dtype is not a fixed-size numeric type.
    """
    array = np.asarray(array)  # (np.ascontiguousarray would turn a scalar into shape (1,))
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    proto.dtype = dtype_enum(array.dtype)
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size
    proto.tensor_content = array.tobytes(order="C")
    return proto


def to_tensor_proto(array) -> tensor_pb2.TensorProto:
    """A numpy array (or scalar) as a new TensorProto with `tensor_content`."""
    return fill_tensor_proto(tensor_pb2.TensorProto(), array)


def from_tensor_proto(
    proto: tensor_pb2.TensorProto,
    writable: bool = False,
    shape: tuple[int, ...] | None = None,
    max_fill_bytes: int = MAX_MESSAGE_BYTES,
) -> np.ndarray:
    """A TensorProto as a numpy array.

    Nothing is allocated before the declared shape is checked against the data the proto
    carries: `tensor_content` must fill the shape exactly; typed fields (`float_val`, ...)
    may hold fewer values than the shape (TensorFlow fills the rest with the last value, or
    zeros), but only up to `max_fill_bytes`.

    Args:
        proto: the tensor.
        writable: copy out of the message buffer (otherwise the array is read-only).
        shape: `shape_of(proto)` if the caller has it already (reading it again costs time).
        max_fill_bytes: the largest tensor that may be filled from fewer values than its shape.

    Raises:
        ValueError: the proto is malformed (negative sizes, content that does not fill its
            shape, or a shape far larger than its data).
    """
    shape = shape_of(proto) if shape is None else shape
    if shape is None:
        raise ValueError("tensor has an unknown rank")
    if any(size < 0 for size in shape):
        raise ValueError(f"tensor shape {list(shape)} has a negative size")
    np_dtype = NUMPY_OF_DTYPE.get(proto.dtype)
    count = math.prod(shape)
    content = proto.tensor_content  # each read copies the bytes out of the message: read once
    if np_dtype is not None and content:
        expected = count * np_dtype.itemsize
        if len(content) != expected:
            raise ValueError(
                f"tensor_content has {len(content)} bytes; shape {list(shape)} "
                f"of {dtype_name(proto.dtype)} needs {expected}"
            )
        array = np.frombuffer(content, dtype=np_dtype).reshape(shape)
        return array.copy() if writable else array
    present = _typed_values(proto)
    needed = count * (np_dtype.itemsize if np_dtype is not None else 8)
    if present < count and needed > max_fill_bytes:
        raise ValueError(
            f"tensor declares shape {list(shape)} of {dtype_name(proto.dtype)} ({count} elements, "
            f"{needed} bytes) but carries {present} values; a tensor may be filled from fewer "
            f"values than its shape only up to {max_fill_bytes} bytes"
        )
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot read tensor of {dtype_name(proto.dtype)} {list(shape)}: {err}") from None


def _typed_values(proto: tensor_pb2.TensorProto) -> int:
    """How many values the proto's typed fields (`float_val`, `int_val`, ...) carry."""
    return sum(
        len(value) for field, value in proto.ListFields()
        if field.label == field.LABEL_REPEATED
    )
