"""`vae encode` resumes after SIGKILL with every input encoded once, and guards its outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from serving import contract as C
from tests.pipelines.encode_fixtures import (
    column, export_encode, export_tiny_vae, fashion_images, manifest, read_rows, run, tiny_export,
)

__all__ = ["tiny_export"]  # a fixture
REPO = Path(__file__).resolve().parents[2]


def _kill_after_two_shards(args: list[str], out: Path) -> int:
    """Runs `vae encode args` in a subprocess, SIGKILLs it once two shards are recorded;
    returns how many were recorded by then."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    job = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "encode", *args], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / ".encode-state"
    deadline = time.monotonic() + 120
    try:
        while len(list(state.glob("part-*.json"))) < 2:
            assert job.poll() is None, job.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard finished in 120 s"
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(timeout=30)
        job.stderr.close()
    assert job.returncode == -signal.SIGKILL
    assert not (out / "_manifest.json").exists()
    return len(list(state.glob("part-*.json")))


@pytest.mark.slow
@pytest.mark.parametrize("runner, split, total, rows_per_shard", [
    ("local", "train", 60_000, 5000),
    ("beam", "test", 10_000, 1000),  # the FnApiRunner, one process
])
def test_sigkill_then_rerun_encodes_every_input_exactly_once(runner, split, total, rows_per_shard, tiny_export,
                                                             tfds_dir, tmp_path):
    export_dir, _ = tiny_export
    out = tmp_path / "out"
    shards = total // rows_per_shard
    args = ["--model", str(export_dir), "--dataset", "fashion_mnist", "--split", split, "--data-dir", tfds_dir,
            "--out", str(out), "--rows-per-shard", str(rows_per_shard), "--batch-size", "500", "--runner", runner]
    finished_before = _kill_after_two_shards(args, out)
    assert 2 <= finished_before < shards

    assert run(args) == 0  # the same command again
    m = manifest(out)
    assert m["runner"]["resumed_shards"] == finished_before
    assert (m["rows"], m["num_skipped"], len(m["shards"])) == (total, 0, shards)
    table = read_rows(out)
    # every input once (no duplicates, nothing missing), in input order
    assert table.column("id").to_pylist() == [f"{split}:{i}" for i in range(total)]
    images, labels = fashion_images(tfds_dir, split)
    np.testing.assert_array_equal(column(table, "label"), labels)
    expected = export_encode(export_dir, images.astype(np.float32) / 255)
    np.testing.assert_allclose(column(table, C.Z_MEAN), expected[C.Z_MEAN], rtol=1e-6, atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json"] + [s["file"] for s in m["shards"]]


@pytest.fixture
def npy_input(tfds_dir, tmp_path):
    images, _ = fashion_images(tfds_dir, "test", 10)
    floats = images.astype(np.float32) / 255
    floats[9] = np.nan  # the last input is bad: a run without --skip-bad leaves a partial output
    np.save(tmp_path / "x.npy", floats)
    return tmp_path / "x.npy"


def test_finished_output_needs_overwrite(tiny_export, npy_input, tmp_path, capsys):
    export_dir, _ = tiny_export
    out = tmp_path / "out"
    args = ["--model", export_dir, "--npy", npy_input, "--out", out, "--skip-bad"]
    assert run(args) == 0
    before = (out / "_manifest.json").read_bytes()
    assert run(args) == 2
    error = capsys.readouterr().err
    assert "already holds a finished encoding" in error and "--overwrite" in error
    assert (out / "_manifest.json").read_bytes() == before
    assert run(args + ["--reconstruction-error", "--overwrite"]) == 0
    assert "reconstruction_error" in read_rows(out).column_names
    assert manifest(out)["options"]["reconstruction_error"] is True


def test_partial_output_of_other_arguments_is_refused(tiny_export, npy_input, tmp_path, capsys):
    export_dir, _ = tiny_export
    out = tmp_path / "out"
    args = ["--model", export_dir, "--npy", npy_input, "--out", out]
    assert run(args + ["--rows-per-shard", 2]) == 2  # stops at x.npy:9, shards 0-3 done
    assert "bad input x.npy:9" in capsys.readouterr().err
    assert run(args + ["--rows-per-shard", 3, "--skip-bad"]) == 2
    error = capsys.readouterr().err
    assert "holds an unfinished encoding made with other arguments" in error
    assert "options.rows_per_shard: 2 -> 3" in error and "--overwrite" in error
    assert len(list(out.glob("part-*-of-00005.parquet"))) == 4  # untouched

    assert run(args + ["--rows-per-shard", 3, "--skip-bad", "--overwrite"]) == 0  # starts over
    m = manifest(out)
    assert m["runner"]["resumed_shards"] == 0 and [s["rows"] for s in m["shards"]] == [3, 3, 3, 0]
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-0000{k}-of-00004.parquet" for k in range(4)]


def test_a_new_model_version_does_not_resume_an_older_ones_output(npy_input, tmp_path, capsys):
    first, _ = export_tiny_vae(tmp_path / "exports", version=1)
    out = tmp_path / "out"
    args = ["--model", first.parent, "--npy", npy_input, "--out", out, "--rows-per-shard", 2]
    assert run(args) == 2
    capsys.readouterr()
    export_tiny_vae(tmp_path / "exports", version=2, seed=3)
    assert run(args + ["--skip-bad"]) == 2
    assert "model.path" in capsys.readouterr().err
    assert run(args + ["--model", first, "--skip-bad"]) == 0  # the version it started with
    assert manifest(out)["model"]["version"] == 1 and manifest(out)["runner"]["resumed_shards"] == 4


def test_folder_with_other_files_is_refused(tiny_export, npy_input, tmp_path, capsys):
    export_dir, _ = tiny_export
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run(["--model", export_dir, "--npy", npy_input, "--out", out, "--skip-bad", "--overwrite"]) == 2
    assert "is not empty and holds no encode job (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_damaged_finished_shard_is_encoded_again(tiny_export, npy_input, tmp_path, capsys):
    export_dir, _ = tiny_export
    out = tmp_path / "out"
    args = ["--model", export_dir, "--npy", npy_input, "--out", out, "--rows-per-shard", 2, "--batch-size", 3]
    assert run(args) == 2  # shards 0-3 finished, shard 4 holds the bad input
    with open(out / "part-00001-of-00005.parquet", "ab") as f:
        f.write(b"x")  # no longer the file that was checksummed
    assert run(args + ["--skip-bad"]) == 0
    m = manifest(out)
    assert m["runner"]["resumed_shards"] == 3 and [s["rows"] for s in m["shards"]] == [2, 2, 2, 2, 1]
    ids = read_rows(out).column("id").to_pylist()
    assert ids == [f"x.npy:{i}" for i in range(9)]


def test_an_output_finished_under_the_old_manifest_name_is_still_guarded(tiny_export, npy_input, tmp_path, capsys):
    export_dir, _ = tiny_export
    out = tmp_path / "out"
    args = ["--model", export_dir, "--npy", npy_input, "--out", out, "--skip-bad"]
    assert run(args) == 0
    (out / "_manifest.json").rename(out / "manifest.json")  # as written before the rename
    assert run(args) == 2
    error = capsys.readouterr().err
    assert "already holds a finished encoding (manifest.json: 9 rows" in error and "--overwrite" in error
    assert run(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["_manifest.json", "part-00000-of-00001.parquet"]


@pytest.mark.slow
def test_a_beam_run_resumes_what_a_local_run_left(tiny_export, npy_input, tmp_path):
    export_dir, _ = tiny_export
    out = tmp_path / "out"
    args = ["--model", export_dir, "--npy", npy_input, "--out", out, "--rows-per-shard", 2]
    assert run(args) == 2  # the local runner stops at x.npy:9 with shards 0-3 written
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert len(written) == 4
    assert run(args + ["--skip-bad", "--runner", "beam"]) == 0
    m = manifest(out)
    assert (m["rows"], m["num_skipped"], m["runner"]["resumed_shards"]) == (9, 1, 4)
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in written.items())  # kept, not redone
    assert read_rows(out).column("id").to_pylist() == [f"x.npy:{i}" for i in range(9)]
    assert [b["id"] for b in m["skipped"]] == ["x.npy:9"]
    assert not (out / ".encode-state").exists()
