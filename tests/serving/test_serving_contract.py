"""The serving contract: consistent names, limits, and no key spelled outside it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from serving import contract as C

ROOT = Path(__file__).resolve().parents[2]
# Words a contract name happens to share, in another meaning: command names, the
# `images` input kind of `vae encode`, config fields and record keys.
ALLOWED = {
    ("serving/cli.py", "generate"),  # the `vae generate` subcommand
    ("pipelines/encode/cli.py", "encode"),  # the `vae encode` subcommand
    ("pipelines/encode/__init__.py", "encode"),  # the package's `encode` function
    ("pipelines/encode/local.py", "encode"),  # the progress bar's label
    ("pipelines/encode/cli.py", "images"),  # the input kind of --images
    ("pipelines/encode/config.py", "images"),
    ("pipelines/sources/base.py", "images"),  # the input kind, in the source layer
    ("pipelines/sources/cli.py", "images"),
    ("pipelines/sources/open.py", "images"),
    ("pipelines/sources/spec.py", "images"),
    ("pipelines/encode/config.py", "log_likelihood"),  # EncodeConfig.log_likelihood (a flag)
    ("pipelines/encode/job.py", "log_likelihood"),  # that flag, recorded in the manifest
    ("pipelines/train/cli.py", "seed"),  # the --seed flag
    ("pipelines/labelled.py", "seed"),  # the seed a labelled subset was drawn with
    ("pipelines/labelled.py", "labels"),  # the labelled subset's record of its labels
}


def contract_names() -> set[str]:
    """Every kind's signature names and tensor keys, and the export's file names."""
    variants = [spec for specs in C.all_signatures().values() for spec in specs]
    signature_names = set(C.all_signatures()) | {C.DEFAULT_SIGNATURE}
    keys = {t.key for s in variants for t in (*s.inputs, *s.outputs)}
    files = {C.ASSETS_EXTRA, C.CONFIG_FILE, C.METRICS_FILE, C.CONTRACT_FILE, C.WARMUP_FILE}
    return signature_names | keys | files


def test_signatures_are_keyed_by_name_and_default_is_generate():
    assert all(name == spec.name for name, spec in C.SIGNATURES.items())
    assert C.DEFAULT_SIGNATURE_TARGET == C.GENERATE
    assert set(C.ROW_SIGNATURES) <= set(C.SIGNATURES)
    generate = {t.key: t for t in C.SIGNATURES[C.GENERATE].inputs}
    assert (generate[C.NUM_SAMPLES].dtype, generate[C.NUM_SAMPLES].shape) == ("int32", ())
    assert (generate[C.SEED].dtype, generate[C.SEED].shape) == ("int64", (2,))
    assert (generate[C.TEMPERATURE].dtype, generate[C.TEMPERATURE].shape) == ("float32", ())


def test_each_kind_has_its_signatures_and_label_kinds_take_labels():
    assert C.signatures_for(C.PLAIN_KIND) is C.SIGNATURES
    for kind in (C.LABEL_KIND, C.M2_KIND):
        specs = C.signatures_for(kind)
        generate = {t.key: t for t in specs[C.GENERATE].inputs}
        assert set(generate) == {C.LABELS, C.SEED, C.TEMPERATURE}
        assert (generate[C.LABELS].dtype, generate[C.LABELS].shape) == ("int32", ("N",))
        assert C.GENERATE_BATCH not in specs and C.default_signature_for(kind) == C.GENERATE
    assert {t.key for t in C.signatures_for(C.LABEL_KIND)[C.ENCODE].inputs} == {C.IMAGES, C.LABELS}
    assert {t.key for t in C.signatures_for(C.M2_KIND)[C.ENCODE].inputs} == {C.IMAGES}
    classify = C.signatures_for(C.M2_KIND)[C.CLASSIFY]
    assert classify.outputs[0].resolve((8, 8, 1), 3, 4) == (None, 4)
    assert C.default_signature_for(C.HALF_KIND) == C.COMPLETE and C.GENERATE not in C.signatures_for(C.HALF_KIND)
    assert C.kind_of_features(False, False, False) == C.PLAIN_KIND and C.kind_of_features(True, True, False) == C.M2_KIND
    assert C.kind_of_features(True, False, False) == C.LABEL_KIND and C.kind_of_features(False, False, True) == C.HALF_KIND
    with pytest.raises(ValueError, match="no served kind"):
        C.kind_of_features(False, True, True)
    with pytest.raises(ValueError, match="unknown served kind"):
        C.signatures_for("gan")


def test_labels_are_checked_against_the_classes_and_the_rows():
    assert C.label_error(np.int32([0, 3]), 4) is None and C.label_error(np.int32([]), 4) is None
    assert "[0, 4), got [-1, 4]" in C.label_error(np.int32([4, 0, -1]), 4)
    images = np.zeros((3, 2, 2, 1), np.float32)
    assert "one label per row" in C.limit_error({C.IMAGES: images, C.LABELS: np.int32([0, 1])})
    assert C.limit_error({C.IMAGES: images, C.LABELS: np.int32([0, 1, 2])}) is None
    assert f"at most {C.MAX_BATCH}" in C.limit_error({C.LABELS: np.zeros(C.MAX_BATCH + 1, np.int32)})


def test_shapes_resolve_for_a_model():
    spec = C.SIGNATURES[C.ENCODE]
    assert spec.inputs[0].resolve((28, 28, 1), 4) == (None, 28, 28, 1)
    assert spec.outputs[0].resolve((28, 28, 1), 4) == (None, 4)


@pytest.mark.parametrize(
    "inputs, fragment",
    [
        ({C.NUM_SAMPLES: np.int32(C.MAX_NUM_SAMPLES + 1)}, f"[0, {C.MAX_NUM_SAMPLES}]"),
        ({C.NUM_SAMPLES: np.int32(-1)}, f"[0, {C.MAX_NUM_SAMPLES}]"),
        ({C.Z: np.zeros((C.MAX_BATCH + 1, 4), np.float32)}, f"at most {C.MAX_BATCH}"),
        ({C.TEMPERATURE: np.float32("nan")}, "finite"),
    ],
)
def test_limit_errors_name_the_limit(inputs, fragment):
    assert fragment in C.limit_error(inputs)


def test_inputs_within_limits_pass():
    inputs = {C.NUM_SAMPLES: np.int32(C.MAX_NUM_SAMPLES), C.TEMPERATURE: np.float32(0.5)}
    assert C.limit_error(inputs) is None
    assert C.limit_error({C.IMAGES: np.zeros((C.MAX_BATCH, 2, 2, 1), np.float32)}) is None


def test_rows_per_request_fits_the_message_limit():
    row = C.image_bytes((28, 28, 1))
    assert C.rows_per_request(row) == C.MAX_BATCH
    assert C.rows_per_request(row, 100 * row) == 90
    assert C.rows_per_request(10 * C.MAX_MESSAGE_BYTES) == 1


def test_no_contract_key_is_spelled_outside_the_contract():
    """Every serving and pipelines module and every serving benchmark takes names from
    serving.contract."""
    names = contract_names()
    files = [p for p in (ROOT / "serving").glob("*.py") if p.name != "contract.py"]
    files += sorted((ROOT / "pipelines").rglob("*.py"))
    files += list((ROOT / "benchmarks").glob("serving_*.py"))
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                where = path.relative_to(ROOT).as_posix()
                if node.value in names and (where, node.value) not in ALLOWED:
                    offenders.append(f"{where}:{node.lineno}: {node.value!r}")
    assert not offenders, "contract names spelled outside serving/contract.py:\n" + "\n".join(offenders)
