"""tf.distribute: mirrored replicas, two workers on 127.0.0.1, and kill-and-resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.distribute import DistributionError, make_cluster

ROOT = Path(__file__).resolve().parents[2]
VAE = [sys.executable, "-m", "pipelines.cli"]
# Flags first, then SECTION.FIELD=VALUE overrides (argparse takes the positionals in one run).
SMALL = ["--epochs", "2", "--batch-size", "64", "train.steps_per_epoch=30", "train.iwae_k=10",
         "train.eval_examples=200", "model.hidden_units=[128]", "train.eval_batch_size=200"]


def run(args, env=None, timeout=300):
    done = subprocess.run(args, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def history(workdir):
    return json.loads((Path(workdir) / "history.json").read_text())["metrics"]


def test_multiworker_without_tf_config_says_what_is_missing(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DistributionError, match="TF_CONFIG"):
        make_cluster("multiworker")
    with pytest.raises(DistributionError, match="unknown strategy"):
        make_cluster("tpu")


@pytest.mark.slow
def test_mirrored_first_step_update_equals_one_device_and_each_replica_draws_its_own_noise():
    script = str(ROOT / "tests/pipelines/first_step.py")
    env = {"PYTHONPATH": str(ROOT)}
    one = json.loads(run([sys.executable, script, "1"], env).strip().splitlines()[-1])
    two = json.loads(run([sys.executable, script, "2"], env).strip().splitlines()[-1])
    assert (one["replicas"], two["replicas"]) == (1, 2)
    a, b = np.array(one["update"]), np.array(two["update"])
    ratio = np.linalg.norm(b) / np.linalg.norm(a)
    assert ratio == pytest.approx(1.0, abs=1e-4)  # unscaled replica losses would give 2.000
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-6)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    # Each replica draws its own training noise; replica 0 draws what one device draws.
    first, second = two["noise_seeds"]
    assert one["noise_seeds"] == [first] and second != first


@pytest.mark.slow
def test_two_workers_match_one_process(tmp_path, tfds_dir):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [*VAE, "train", "--workdir", str(tmp_path / f"worker{index}"), *SMALL],
            cwd=ROOT, env={**os.environ, "TF_CONFIG": tf_config},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    # The chief (worker 0) alone writes outputs.
    assert (tmp_path / "worker0" / "metrics.json").is_file()
    assert not (tmp_path / "worker1").exists()
    multi = history(tmp_path / "worker0")

    # Multi-worker runs stream the data through tf.data; the one-process runs are made
    # to stream it too (not hold it in memory), so that all three see the same batches.
    streamed = [*SMALL, "data.in_memory_max_mb=0"]
    run([*VAE, "train", "--workdir", str(tmp_path / "mirrored"), "--cpu-replicas", "2", *streamed])
    run([*VAE, "train", "--workdir", str(tmp_path / "single"), "--strategy", "default", *streamed])
    mirrored, single = history(tmp_path / "mirrored"), history(tmp_path / "single")
    # Two replicas in two processes compute what two replicas in one process compute...
    np.testing.assert_allclose(multi["loss"], mirrored["loss"], rtol=1e-3)
    np.testing.assert_allclose(multi["val_loss"], mirrored["val_loss"], rtol=1e-3)
    # ...and what one device computes, up to the sampling noise drawn per replica.
    np.testing.assert_allclose(multi["loss"], single["loss"], rtol=0.02)
    np.testing.assert_allclose(multi["val_loss"], single["val_loss"], rtol=0.02)
    steps = [json.loads((tmp_path / d / "metrics.json").read_text())["optimizer_steps"]
             for d in ("worker0", "mirrored", "single")]
    assert steps == [60, 60, 60]


def trained_weights(workdir: Path) -> list[np.ndarray]:
    from pipelines.train.run import load_saved_model

    return [w.numpy() for w in load_saved_model(workdir / "model.keras").weights]


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [1, 2])
def test_a_run_sigkilled_mid_epoch_resumes_to_the_uninterrupted_runs_weights_bit_for_bit(
        replicas, tmp_path, tfds_dir):
    """The default model (VampPrior, warm-up, decaying learning rate) and the default data
    path (held in memory): the resumed run sees the batches and the noise the killed one
    would have, so it ends with the same weights and the same test figures."""
    args = ["--epochs", "3", "--seed", "3", "--cpu-replicas", str(replicas), "train.steps_per_epoch=120",
            "train.checkpoint_every_steps=50", "train.iwae_k=10", "train.eval_examples=500"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([*VAE, "train", "--workdir", str(killed), *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    # Kill it once a mid-epoch checkpoint of the second epoch exists.
    while time.monotonic() < deadline and process.poll() is None:
        index = killed / "checkpoints" / "checkpoint"
        if index.exists() and "ckpt-200" in index.read_text():
            break
        time.sleep(0.2)
    assert process.poll() is None, "training ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists()

    run([*VAE, "-v", "train", "--workdir", str(killed), *args])
    run([*VAE, "train", "--workdir", str(tmp_path / "whole"), *args])
    resumed = json.loads((killed / "metrics.json").read_text())
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert resumed["optimizer_steps"] == whole["optimizer_steps"] == 360
    assert resumed["epochs"] == whole["epochs"] == 3
    for a, b in zip(trained_weights(killed), trained_weights(tmp_path / "whole"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed["test_nelbo"] == whole["test_nelbo"]
    assert not (killed / "checkpoints").exists()  # cleared once the outputs were written


@pytest.mark.slow
def test_resume_with_another_config_is_refused(tmp_path, tfds_dir):
    workdir = tmp_path / "w"
    (workdir / "checkpoints").mkdir(parents=True)
    from pipelines.config import RunConfig
    from pipelines.train import train
    from pipelines.workdir import WorkdirError

    RunConfig().override("model.latent_dim=8").save(workdir / "config.json")
    with pytest.raises(WorkdirError, match="model.latent_dim: 8 -> 2"):
        train(RunConfig().override("model.latent_dim=2").override(f'data.data_dir="{tfds_dir}"'),
              workdir, verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--mixed-precision", "train.jit=true"])
def test_mixed_precision_and_xla_train(flag, tmp_path, tfds_dir):
    args = ["--epochs", "1", "--batch-size", "64", "train.steps_per_epoch=20", "train.iwae_k=5",
            "train.eval_examples=200", "model.hidden_units=[64]", "train.eval_batch_size=200"]
    if flag.startswith("--"):
        args = [flag, *args]
    else:
        args = [*args, flag]
    run([*VAE, "train", "--workdir", str(tmp_path / "w"), *args])
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 20
    assert np.isfinite(metrics["test_nelbo"]) and metrics["test_nelbo"] < 545
