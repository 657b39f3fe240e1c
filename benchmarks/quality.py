"""Test NLL of the default model against the 784-400-20 MLP VAE, same time budget, one run.

Both train on dynamically binarised Fashion-MNIST for the same wall-clock budget of
training steps (default 600 s), then are evaluated on all 10,000 test images with the
IWAE bound (k = 1000). Prints NLL, negative ELBO, active units and wall time of each,
and the ratio of the NLLs (target: default <= 0.95 x baseline).

Usage:
    .venv/bin/python benchmarks/quality.py --budget 600 --out runs/quality
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BASELINE = ["model.architecture=\"mlp\"", "model.hidden_units=[400]", "model.latent_dim=20",
            "train.batch_size=128", "train.learning_rate=1e-3", "model.kl_warmup_steps=0"]


def run(name: str, overrides: list[str], budget: float, out: Path, data_dir: str | None) -> dict:
    from pipelines.config import RunConfig
    from pipelines.train import train

    config = RunConfig()
    settings = [*overrides, "train.epochs=100000", f"train.max_train_seconds={budget}",
                "train.iwae_k=1000", "train.tensorboard=false"]
    if data_dir:
        settings.append(f'data.data_dir="{data_dir}"')
    for assignment in settings:
        config = config.override(assignment)
    metrics = train(config, out / name, overwrite=True, verbose=0)
    keys = ("test_iwae_nll", "test_nelbo", "active_units", "train_seconds", "epochs",
            "optimizer_steps", "wall_seconds")
    return {"model": name, **{k: metrics[k] for k in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training each")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--data-dir")
    parser.add_argument("default", nargs="*", help="overrides that define the candidate "
                        "(none: the project's default config)")
    args = parser.parse_args()
    out = Path(args.out)
    rows = [run("baseline_mlp_400_20", BASELINE, args.budget, out, args.data_dir),
            run("default", args.default, args.budget, out, args.data_dir)]
    for row in rows:
        print(json.dumps(row))
    ratio = rows[1]["test_iwae_nll"] / rows[0]["test_iwae_nll"]
    print(f"NLL ratio default / baseline: {ratio:.3f} (target <= 0.95); samples in {out}/*/samples.png")


if __name__ == "__main__":
    main()
