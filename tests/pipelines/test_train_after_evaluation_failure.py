"""A run that has trained never loses its training to its test evaluation: killed there
(as the kernel's OOM killer would), the workdir still holds the trained model, `vae
export` exports it, and the same command evaluates it without training again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from pipelines.workdir import CHECKPOINT_DIR, HISTORY_FILE, METRICS_FILE, MODEL_FILE


def vae(*args) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


@pytest.mark.slow
def test_a_run_killed_in_its_evaluation_is_exported_and_evaluated_again_without_training(tfds_dir, tmp_path):
    env = {**os.environ, "TFDS_DATA_DIR": tfds_dir}
    workdir = tmp_path / "run"
    command = vae("train", "--workdir", str(workdir), "--epochs", "2", "--latent-dim", "4",
                  "model.hidden_units=[64]", "train.steps_per_epoch=20")
    # k = 5000 over 10,000 images takes minutes: killed as soon as the evaluation starts.
    with subprocess.Popen(command + ["train.iwae_k=5000"], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as first:
        seen = []
        for line in first.stdout:
            seen.append(line)
            if "evaluating on 10000 test images" in line:
                first.send_signal(signal.SIGKILL)
                break
        first.wait(timeout=120)
    assert first.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    assert (workdir / MODEL_FILE).is_file() and not (workdir / METRICS_FILE).exists()
    history = json.loads((workdir / HISTORY_FILE).read_text())
    assert history["completed_epochs"] == 2 and history["optimizer_steps"] == 40

    exported = subprocess.run(vae("export", "--workdir", str(workdir), "--model-base-path",
                                  str(tmp_path / "exports" / "vae")),
                              env=env, capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    assert (tmp_path / "exports" / "vae" / "1" / "saved_model.pb").is_file()

    again = subprocess.run(command + ["train.iwae_k=10", "train.eval_examples=500"], env=env,
                           capture_output=True, text=True, timeout=900)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert "evaluating it without training again" in output
    assert "Epoch 1/2" not in output and "Epoch 2/2" not in output
    metrics = json.loads((workdir / METRICS_FILE).read_text())
    assert metrics["epochs"] == 2 and metrics["optimizer_steps"] == 40
    assert metrics["iwae_k"] == 10 and metrics["eval_examples"] == 500
    assert (workdir / "exports" / "vae" / "1" / "saved_model.pb").is_file()
    assert not (workdir / CHECKPOINT_DIR).exists()
