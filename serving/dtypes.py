"""The numeric TensorFlow dtypes the APIs read and write as numpy arrays, declared once:
gRPC's TensorProtos (`tensors.py`) and REST's JSON (`json_tensors.py`) both read this table."""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import types_pb2

# The `DataType` enum of each numpy dtype with a fixed size (DT_STRING has none).
DTYPE_OF_NUMPY: dict[np.dtype, int] = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.float16): types_pb2.DT_HALF,
    np.dtype(np.int8): types_pb2.DT_INT8,
    np.dtype(np.int16): types_pb2.DT_INT16,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
    np.dtype(np.uint16): types_pb2.DT_UINT16,
    np.dtype(np.uint32): types_pb2.DT_UINT32,
    np.dtype(np.uint64): types_pb2.DT_UINT64,
    np.dtype(np.bool_): types_pb2.DT_BOOL,
}
NUMPY_OF_DTYPE: dict[int, np.dtype] = {enum: np_dtype for np_dtype, enum in DTYPE_OF_NUMPY.items()}
