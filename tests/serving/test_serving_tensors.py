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


def test_a_huge_shape_with_no_data_is_refused_before_allocating():
    proto = to_tensor_proto(np.zeros((0, 28, 28, 1), np.float32))
    proto.tensor_shape.dim[0].size = 2**40
    with pytest.raises(ValueError, match="carries 0 values; a tensor may be filled"):
        from_tensor_proto(proto)


def test_a_single_typed_value_still_fills_a_small_shape_as_tensorflow_does():
    proto = tf.make_tensor_proto(np.float32(2.5), shape=[3, 2])  # one float_val, shape [3, 2]
    assert len(proto.float_val) == 1 and not proto.tensor_content
    np.testing.assert_array_equal(from_tensor_proto(proto), np.full((3, 2), 2.5, np.float32))
    with pytest.raises(ValueError, match="only up to 16 bytes"):
        from_tensor_proto(proto, max_fill_bytes=16)  # 6 floats: 24 bytes


def test_a_negative_size_is_refused():
    proto = to_tensor_proto(np.ones((2, 3), np.float32))
    proto.tensor_shape.dim[0].size = -2
    with pytest.raises(ValueError, match="negative size"):
        from_tensor_proto(proto)
