"""numpy <-> TensorProto conversions (serving/tensors.py), used by both the server and the client."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from serving.tensors import from_tensor_proto, shape_of, to_tensor_proto


@pytest.mark.parametrize(
    "array",
    [np.int32(16), np.asarray([7, 3], np.int64), np.float32(0.5), np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1)],
    ids=["int32 scalar", "int64 pair", "float32 scalar", "float32 images"],
)
def test_round_trip_keeps_dtype_shape_and_values(array):
    back = from_tensor_proto(to_tensor_proto(array))
    assert back.dtype == np.asarray(array).dtype and back.shape == np.shape(array)
    np.testing.assert_array_equal(back, array)


def test_arrays_are_read_only_views_unless_writable_is_asked():
    proto = to_tensor_proto(np.ones((2, 3), np.float32))
    assert not from_tensor_proto(proto).flags.writeable
    copy = from_tensor_proto(proto, writable=True)
    copy[0, 0] = 5.0  # the caller owns it
    assert from_tensor_proto(proto)[0, 0] == 1.0


def test_a_known_shape_gives_the_same_array():
    proto = to_tensor_proto(np.arange(6, dtype=np.int64).reshape(3, 2))
    np.testing.assert_array_equal(from_tensor_proto(proto, shape=shape_of(proto)), from_tensor_proto(proto))


def test_content_that_does_not_fill_the_shape_is_refused():
    proto = to_tensor_proto(np.ones((2, 3), np.float32))
    proto.tensor_shape.dim[0].size = 3
    with pytest.raises(ValueError, match="tensor_content has 24 bytes; shape \\[3, 3\\] of DT_FLOAT needs 36"):
        from_tensor_proto(proto)


def test_typed_fields_are_read_like_tf_serving_writes_them():
    proto = tf.make_tensor_proto(np.asarray([[1.5, 2.5]], np.float32))
    proto.ClearField("tensor_content")
    proto.float_val.extend([1.5, 2.5])
    np.testing.assert_array_equal(from_tensor_proto(proto), [[1.5, 2.5]])
