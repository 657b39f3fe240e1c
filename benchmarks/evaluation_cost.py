"""Peak memory and seconds of the default test evaluation of every kind and architecture.

For each case, `vae train` runs in its own process: one epoch of two training steps, then
the model's default evaluation of all 10,000 Fashion-MNIST test images (its default k:
`pipelines.evaluate.resolve_iwae_k`), the pictures and the export. Prints one row per case:
the k chosen, the evaluation plan (images per batch, samples per chunk, the chunk's
memory bound), the evaluation's seconds and the process's peak resident memory (from
`os.wait4`, so the whole process: TensorFlow, the data, training, evaluation, export).
tests/pipelines/test_evaluation_memory.py holds a subset of these to a stated bound.

Usage:
    .venv/bin/python benchmarks/evaluation_cost.py --out runs/evaluation_cost
    .venv/bin/python benchmarks/evaluation_cost.py --cases vae-conv m2-conv
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CASES = {
    "vae-mlp": [],
    "vae-mlp-two-layers": ["model.density.stochastic_layers=2"],
    "vae-conv": ["--architecture", "conv"],
    "cvae-label-mlp": ["--kind", "cvae"],
    "cvae-label-conv": ["--kind", "cvae", "--architecture", "conv"],
    "cvae-half-mlp": ["--kind", "cvae", "--condition", "top_half"],
    "cvae-half-conv": ["--kind", "cvae", "--condition", "top_half", "--architecture", "conv"],
    "m2-mlp": ["--kind", "m2", "--labelled-per-class", "100"],
    "m2-conv": ["--kind", "m2", "--labelled-per-class", "100", "--architecture", "conv"],
}


def run_case(name: str, flags: list[str], out: Path) -> dict:
    workdir = out / name
    args = [sys.executable, "-m", "pipelines.cli", "train", "--workdir", str(workdir), "--overwrite",
            "--epochs", "1", *flags, "train.steps_per_epoch=2"]
    with subprocess.Popen(args, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{name} failed:\n{output[-3000:]}")
    metrics = json.loads((workdir / "metrics.json").read_text())
    return {"case": name, "iwae_k": metrics["iwae_k"], "eval_examples": metrics["eval_examples"],
            **{f"plan_{k}": v for k, v in metrics["eval_plan"].items() if k != "iwae_k"},
            "eval_seconds": round(metrics["eval_seconds"], 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/evaluation_cost"), help="workdirs (default %(default)s)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES),
                        help="cases to run (default: all)")
    args = parser.parse_args()
    rows = []
    for name in args.cases:
        row = run_case(name, CASES[name], args.out)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| case | k | images/batch | samples/chunk | chunk bound (MB) | eval seconds | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['case']} | {r['iwae_k']} | {r['plan_batch_size']} | {r['plan_chunk_size']} | "
              f"{r['plan_bound_mb']} | {r['eval_seconds']} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
