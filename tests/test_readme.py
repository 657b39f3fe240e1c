"""The README's two commands: the first runs the main job end to end, the second is CI's."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.processes import run_with_peak

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The commands of the README's first code block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_ci_runs_the_readme_test_command():
    demo, tests = readme_commands()[:2]
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == tests
    assert demo != tests


@pytest.mark.slow
def test_readme_command_1_runs_the_main_job_end_to_end(tmp_path, tfds_dir):
    demo = readme_commands()[0]
    env = {**os.environ, "VAE_DEMO_DIR": str(tmp_path / "demo"), "TFDS_DATA_DIR": tfds_dir}
    code, output, _ = run_with_peak(["bash", "-c", demo], cwd=ROOT, env=env, timeout=900)
    assert code == 0, output[-6000:]
    train = tmp_path / "demo" / "train"
    metrics = json.loads((train / "metrics.json").read_text())
    assert metrics["iwae_k"] == 1000 and metrics["eval_examples"] == 10_000
    assert metrics["test_iwae_nll"] < 300  # a random decoder scores about 543 nats
    for name in ("model.keras", "config.json", "samples.png", "reconstructions.png",
                 "exports/vae/1/saved_model.pb"):
        assert (train / name).is_file()
    assert f"outputs in {train}" in output
    # generate over gRPC wrote a picture; the test split was batch-encoded.
    with Image.open(tmp_path / "demo" / "generated.png") as picture:
        assert picture.format == "PNG" and np.asarray(picture).std() > 0
    manifest = json.loads((tmp_path / "demo" / "codes" / "_manifest.json").read_text())
    assert manifest["rows"] == 10_000
