"""Training speed of two versions of the project's code, side by side in one run.

A change that should not slow training (a refactor, a new model kind beside the old one)
is checked against the commit before it: `vae train` of the 784-400-20 MLP VAE runs from a
git worktree of `--before` and from this checkout, in alternating rounds (A B, B A, ...),
each in a fresh process, and the median images/s over the epochs after the first are set
side by side. Both use this checkout's virtual environment.

Usage:
    .venv/bin/python benchmarks/train_ab.py --before HEAD~1 --rounds 4
    .venv/bin/python benchmarks/train_ab.py --before 064f379 --set data.train_split=train \
        --set data.validation_split=test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (batch size, mixed precision): the project's best at batch 128, float32 at both sizes.
CONFIGS = ((128, True), (128, False), (1024, False))
MAIN = "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"


def images_per_second(tree: Path, batch: int, mixed: bool, epochs: int, overrides=()) -> float:
    """One `vae train` run of the code in `tree`: images/s, median of epochs 2..N."""
    with tempfile.TemporaryDirectory() as work:
        args = ["train", "--workdir", work, "--epochs", str(epochs), "--batch-size", str(batch),
                *(["--mixed-precision"] if mixed else []),
                "model.hidden_units=[400]", "model.latent_dim=20", "train.iwae_k=1",
                "train.eval_examples=500", "train.tensorboard=false", *overrides]
        env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run([sys.executable, "-c", MAIN, *args], cwd=tree, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"vae train in {tree} failed:\n{done.stderr[-3000:]}")
        metrics = json.loads((Path(work) / "metrics.json").read_text())
    # The run's own figure (its epoch's images over the median of epochs 2..N): the two
    # trees may train on splits of different sizes (train[:90%] by default since 2026-12-07).
    return float(metrics["train_images_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="HEAD", help="the git revision to compare with (default HEAD)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="an override for both trees' runs, e.g. data.train_split=train to train "
                        "both on the same images when their default splits differ")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        before = Path(folder) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            print(f"`{' '.join(['.venv/bin/python', 'benchmarks/train_ab.py', *sys.argv[1:]])}`; "
                  f"load average before: {os.getloadavg()[0]:.2f}\n")
            print("| batch | precision | before images/s (rounds) | after images/s (rounds) | after / before |")
            print("| --- | --- | --- | --- | --- |")
            trees = [("before", before), ("after", ROOT)]
            for batch, mixed in CONFIGS:
                runs: dict[str, list[float]] = {"before": [], "after": []}
                for round_ in range(args.rounds):
                    for name, tree in (trees if round_ % 2 == 0 else trees[::-1]):
                        runs[name].append(images_per_second(tree, batch, mixed, args.epochs, args.set))
                medians = {k: statistics.median(v) for k, v in runs.items()}
                cells = [f"{medians[k]:,.0f} ({', '.join(f'{x:,.0f}' for x in runs[k])})" for k in ("before", "after")]
                print(f"| {batch} | {'mixed bf16' if mixed else 'float32'} | {cells[0]} | {cells[1]} | "
                      f"{medians['after'] / medians['before']:.3f} |", flush=True)
            print(f"\nload average after: {os.getloadavg()[0]:.2f}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
