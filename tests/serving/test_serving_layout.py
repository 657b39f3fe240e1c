"""The export layout as TF Serving reads it (serving/layout.py) and TensorFlow's errors as
the server reports them (serving/errors.py), on a real export."""

from __future__ import annotations

import shutil

import grpc
import pytest
import tensorflow as tf

from serving import contract as C
from serving.errors import ExportError, status_code_name, status_code_of, tf_error_message
from serving.layout import list_versions, read_meta_graph, read_signature_defs


def test_list_versions_takes_integer_folders_only_in_numeric_order(tmp_path):
    for name in ("2", "10", "1", ".staging-3", "latest"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert list_versions(tmp_path) == [1, 2, 10]
    assert list_versions(str(tmp_path)) == [1, 2, 10]
    assert list_versions(tmp_path / "missing") == []
    assert list_versions(tmp_path / "7") == []


def test_signatures_are_read_from_saved_model_pb_as_loaded(export_dir, loaded):
    definitions = read_signature_defs(export_dir)
    served = {name for name in definitions if not name.startswith("__")}  # not __saved_model_init_op
    assert served == set(loaded.signatures) == set(C.SIGNATURES) | {C.DEFAULT_SIGNATURE}
    assert set(definitions[C.ENCODE].outputs) == {C.Z_MEAN, C.Z_LOG_VAR}
    assert "serve" in read_meta_graph(str(export_dir)).meta_info_def.tags


def test_a_missing_or_corrupt_saved_model_is_an_export_error(export_dir, tmp_path):
    with pytest.raises(ExportError, match="cannot read"):
        read_meta_graph(tmp_path)
    broken = tmp_path / "1"
    shutil.copytree(export_dir, broken)
    (broken / C.SAVED_MODEL_FILE).write_bytes(b"\xff not a protobuf")
    with pytest.raises(ExportError, match=f"cannot read .*{C.SAVED_MODEL_FILE}"):
        read_meta_graph(broken)


def test_a_failed_in_graph_check_reads_as_its_message_and_code(loaded):
    inputs = {C.NUM_SAMPLES: tf.constant(-1, tf.int32), C.SEED: tf.zeros(2, tf.int64),
              C.TEMPERATURE: tf.constant(1.0)}
    with pytest.raises(tf.errors.OpError) as err:
        loaded.signatures[C.GENERATE](**inputs)
    message = tf_error_message(err.value)
    assert message.startswith("assertion failed") and f"[0, {C.MAX_NUM_SAMPLES}]" in message
    assert "\n" not in message and "{{" not in message
    assert status_code_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_an_eager_op_error_loses_its_function_node_and_op_noise():
    with pytest.raises(tf.errors.OpError) as err:
        tf.reshape(tf.zeros(6), [4, 2])
    assert "[Op:" in err.value.message
    message = tf_error_message(err.value)
    assert "[Op:" not in message and "{{" not in message and "6" in message
    assert status_code_of(err.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_status_code_names_by_number():
    assert [status_code_name(n) for n in (0, 5, 14)] == ["OK", "NOT_FOUND", "UNAVAILABLE"]
    assert status_code_name(99) == "99"
