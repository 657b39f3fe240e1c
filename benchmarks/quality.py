"""Test NLL of named candidates beside the 784-400-20 MLP VAE, same time budget, one run.

Each model trains on dynamically binarised Fashion-MNIST (the run config's default
splits: it trains on `train[:90%]`, 54,000 images, and validates on `train[90%:]`, which
steers nothing here: no early stopping) for the same wall-clock budget of training steps
(default 600 s), one after the other in this process, then is
evaluated on the test images (all 10,000 by default, binarised once) with the IWAE bound
(k = 1000 by default). Prints one JSON line per model as it finishes (also appended to
`<out>/results.jsonl`), then a Markdown table: NLL, negative ELBO, active units, epochs,
wall time, and each model's NLL minus the first candidate's.

The models: the 784-400-20 baseline (unless --no-baseline), the default config as it
was before issue 16 (with --previous-default), then the candidates in order. `--candidate NAME OVERRIDE...` names one (repeat the flag for several); with none,
one candidate `default` is the project's default config plus the positional overrides.
Screening runs may evaluate fewer test images with fewer samples (--eval-examples,
--iwae-k); judge a candidate only against the others of the same run.

Usage:
    .venv/bin/python benchmarks/quality.py --budget 600 --out runs/quality
    .venv/bin/python benchmarks/quality.py --budget 600 --previous-default
    .venv/bin/python benchmarks/quality.py --budget 300 --no-baseline --eval-examples 2000 \\
        --iwae-k 200 --candidate default --candidate decay train.lr_schedule=linear
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BASELINE = ["model.architecture=\"mlp\"", "model.hidden_units=[400]", "model.latent_dim=20",
            "model.block=\"dense\"", "train.batch_size=128", "train.learning_rate=1e-3",
            "model.kl_warmup_steps=0", "train.lr_schedule=\"constant\"",
            "train.init_output_bias=false", "train.mixed_precision=false", "model.density.train_samples=1",
            "train.iwae_start_fraction=0", "model.density.prior=\"gaussian\"", "model.density.stochastic_layers=1"]
BASELINE_NAME = "baseline_mlp_400_20"
# The default config before issue 16 ("today's default" of its target: 231.10 nats).
PREVIOUS_DEFAULT = ["model.architecture=\"mlp\"", "model.hidden_units=[512,256]", "model.latent_dim=16",
                    "model.block=\"dense\"", "model.kl_warmup_steps=0", "model.density.train_samples=1",
                    "model.density.prior=\"gaussian\"", "model.density.stochastic_layers=1", "train.batch_size=128",
                    "train.learning_rate=1e-3", "train.lr_schedule=\"constant\"",
                    "train.init_output_bias=false", "train.iwae_start_fraction=0",
                    "train.mixed_precision=false"]
PREVIOUS_NAME = "previous_default"


def run(name: str, overrides: list[str], budget: float, out: Path, data_dir: str | None,
        iwae_k: int, eval_examples: int | None) -> dict:
    from pipelines.config import RunConfig
    from pipelines.train import train

    config = RunConfig()
    settings = [*overrides, "train.epochs=100000", f"train.max_train_seconds={budget}",
                f"train.iwae_k={iwae_k}", "train.tensorboard=false"]
    if eval_examples:
        settings.append(f"train.eval_examples={eval_examples}")
    if data_dir:
        settings.append(f'data.data_dir="{data_dir}"')
    for assignment in settings:
        config = config.override(assignment)
    metrics = train(config, out / name, overwrite=True, verbose=0)
    keys = ("test_iwae_nll", "test_nelbo", "active_units", "train_seconds", "epochs",
            "optimizer_steps", "wall_seconds")
    units = config.model.latent_dim * config.model.density.stochastic_layers  # both layers' units
    return {"model": name, "latent_dim": units, "overrides": overrides,
            **{k: metrics[k] for k in keys}}


def table(rows: list[dict], reference: str) -> str:
    ref = next((r["test_iwae_nll"] for r in rows if r["model"] == reference), None)
    lines = ["| model | test NLL (IWAE) | vs " + reference + " | test negative ELBO | active units | "
             "epochs | optimizer steps | wall time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        diff = "" if ref is None else f"{r['test_iwae_nll'] - ref:+.2f}"
        lines.append(f"| {r['model']} | {r['test_iwae_nll']:.2f} | {diff} | {r['test_nelbo']:.2f} | "
                     f"{r['active_units']} of {r['latent_dim']} | {r['epochs']} | {r['optimizer_steps']} | "
                     f"{r['wall_seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training each")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--data-dir")
    parser.add_argument("--iwae-k", type=int, default=1000, help="importance samples of the test NLL")
    parser.add_argument("--eval-examples", type=int, help="test images scored (default: all)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the 784-400-20 baseline")
    parser.add_argument("--previous-default", action="store_true",
                        help=f"also train the default config before issue 16 ({PREVIOUS_NAME!r})")
    parser.add_argument("--candidate", nargs="+", action="append", metavar=("NAME", "OVERRIDE"),
                        help="a named candidate: its name, then its config overrides (repeatable)")
    parser.add_argument("default", nargs="*", help="overrides of the candidate `default` "
                        "when no --candidate is given (none: the project's default config)")
    args = parser.parse_args()
    if args.candidate and args.default:
        parser.error("give the candidates' overrides with --candidate, not positionally")
    candidates = [(c[0], c[1:]) for c in args.candidate] if args.candidate else [("default", args.default)]
    names = [name for name, _ in candidates]
    if len(set(names)) != len(names) or {BASELINE_NAME, PREVIOUS_NAME} & set(names):
        parser.error(f"candidate names must be distinct and not {BASELINE_NAME!r} or {PREVIOUS_NAME!r}")
    if args.previous_default:
        candidates.insert(0, (PREVIOUS_NAME, PREVIOUS_DEFAULT))
        names.insert(0, PREVIOUS_NAME)
    if not args.no_baseline:
        candidates.insert(0, (BASELINE_NAME, BASELINE))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, overrides in candidates:
        row = run(name, overrides, args.budget, out, args.data_dir, args.iwae_k, args.eval_examples)
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    print(f"\nbudget {args.budget:.0f} s, IWAE k={args.iwae_k}, "
          f"{args.eval_examples or 'all'} test images; samples in {out}/*/samples.png\n")
    print(table(rows, names[0]))


if __name__ == "__main__":
    main()
