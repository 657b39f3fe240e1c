"""Throughput of `vae encode` on all 70,000 Fashion-MNIST images (train + test).

Measures, in one process and on the same export:

  in-process   the export's `encode` signature called on the float32 arrays in memory
               (batches of 1024): the calls alone, and with the export's load and first
               call (what an in-process script pays too)
  local npy    the local runner on the same images saved as one uint8 .npy file
  local tfds   the local runner on the tfds `train+test` split (reads and decodes PNGs)
  beam npy     the Beam pipeline (local FnApiRunner, in-memory), with --beam

Each job figure is the wall time of the whole `encode()` call: loading the export,
opening the input, reading, checking, encoding, writing and checksumming the Parquet
shards, and the manifest. Best of --repeats runs (the machine is shared: noise).

    .venv/bin/python benchmarks/encode_throughput.py [--model EXPORT] [--beam] [--repeats 3]

Without --model a VAE of the default configuration (MLP 512-256, 16 latent units) is
exported untrained to a temporary folder: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from serving import contract as C  # noqa: E402


def default_export(folder: Path) -> Path:
    from model import VAE, ModelConfig
    from serving.export import export_model

    vae = VAE(ModelConfig(image_shape=(28, 28, 1)), seed=0)
    vae(np.zeros((1, 28, 28, 1), np.float32))
    return export_model(vae, folder, "vae", 1)


def fashion_mnist(data_dir: str | None) -> np.ndarray:
    """All 70,000 images, train then test, uint8 (N, 28, 28, 1)."""
    import tensorflow_datasets as tfds

    from pipelines.config import DataConfig
    from pipelines.data import get_builder

    builder = get_builder(DataConfig(dataset="fashion_mnist", data_dir=data_dir))
    ds = builder.as_dataset(split="train+test", shuffle_files=False, batch_size=-1)
    return tfds.as_numpy(ds)["image"]


def in_process(export: Path, pixels: np.ndarray) -> tuple[float, float]:
    """(seconds of the signature calls alone, seconds of load + first call + calls)."""
    started = time.perf_counter()
    encode = tf.saved_model.load(str(export)).signatures[C.ENCODE]
    encode(**{C.IMAGES: tf.constant(pixels[:C.MAX_BATCH])})  # the first call builds the graph
    calls = time.perf_counter()
    for start in range(0, len(pixels), C.MAX_BATCH):
        encode(**{C.IMAGES: tf.constant(pixels[start:start + C.MAX_BATCH])})[C.Z_MEAN].numpy()
    done = time.perf_counter()
    return done - calls, done - started


def job(config) -> float:
    from pipelines.encode import encode

    if os.path.exists(config.out):
        shutil.rmtree(config.out)
    started = time.perf_counter()
    manifest = encode(config)
    seconds = time.perf_counter() - started
    assert manifest["rows"] == 70_000, manifest["rows"]
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an export (default: a default-config VAE, exported untrained)")
    parser.add_argument("--data-dir", default=os.environ.get("TFDS_DATA_DIR"), help="tfds data directory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beam", action="store_true", help="also time the Beam pipeline")
    args = parser.parse_args()

    from pipelines.encode import EncodeConfig

    work = Path(tempfile.mkdtemp(prefix="encode_bench_"))
    try:
        export = Path(args.model) if args.model else default_export(work / "exports")
        images = fashion_mnist(args.data_dir)
        np.save(work / "fmnist.npy", images)
        pixels = images.astype(np.float32) / 255.0
        common = dict(model=str(export), out=str(work / "out"), progress=False)
        jobs = {
            "local npy": EncodeConfig(input_kind="npy", paths=(str(work / "fmnist.npy"),), **common),
            "local tfds": EncodeConfig(input_kind="tfds", dataset="fashion_mnist", split="train+test",
                                       data_dir=args.data_dir, **common),
        }
        if args.beam:
            jobs["beam npy"] = EncodeConfig(input_kind="npy", paths=(str(work / "fmnist.npy"),),
                                            runner="beam", **common)
        runs = [in_process(export, pixels) for _ in range(args.repeats)]
        times = {"in-process calls": [r[0] for r in runs], "in-process load+calls": [r[1] for r in runs]}
        for name, config in jobs.items():
            times[name] = [job(config) for _ in range(args.repeats)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = {name: min(values) for name, values in times.items()}
    calls, loaded = best["in-process calls"], best["in-process load+calls"]
    print(f"\n70,000 Fashion-MNIST images, export {export if args.model else 'default-config VAE'}, "
          f"best of {args.repeats} (median in brackets), {os.cpu_count()} CPUs")
    print("| mode | seconds | rows/s | ratio to calls | ratio to load+calls |")
    print("| --- | --- | --- | --- | --- |")
    for name, seconds in best.items():
        median = statistics.median(times[name])
        print(f"| {name} | {seconds:.2f} ({median:.2f}) | {70_000 / seconds:,.0f} | "
              f"{calls / seconds:.2f} | {loaded / seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
