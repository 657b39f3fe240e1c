"""The serving contract: consistent names, limits, and no key spelled outside it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from serving import contract as C

ROOT = Path(__file__).resolve().parents[2]
# The `vae generate` subcommand is a command name, not the signature it calls.
ALLOWED = {("cli.py", "generate")}


def contract_names() -> set[str]:
    signature_names = set(C.SIGNATURES) | {C.DEFAULT_SIGNATURE}
    keys = {t.key for s in C.SIGNATURES.values() for t in (*s.inputs, *s.outputs)}
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
    """Every serving module and benchmark takes names from serving.contract."""
    names = contract_names()
    files = [p for p in (ROOT / "serving").glob("*.py") if p.name != "contract.py"]
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
                if node.value in names and (path.name, node.value) not in ALLOWED:
                    offenders.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert not offenders, "contract names spelled outside serving/contract.py:\n" + "\n".join(offenders)
