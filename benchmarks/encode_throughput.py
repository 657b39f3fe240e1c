"""Throughput of `vae encode` on all 70,000 Fashion-MNIST images (train + test).

Measures, in one process and on the same export:

  in-process   the export's `encode` signature called on the float32 arrays in memory,
               one call after another (batches of 1024): the calls alone, and with the
               export's load and first call (what an in-process script pays too);
               for reference also two calls in flight at a time (`--threads 2`)
  local npy    the local runner on the same images saved as one uint8 .npy file
  local tfds   the local runner on the tfds `train+test` split (reads and decodes PNGs)
  beam npy     the Beam pipeline (local FnApiRunner, in-memory), with --beam

Each job figure is the wall time of the whole `encode()` call: loading the export,
opening the input, reading, checking, encoding, writing and checksumming the Parquet
shards, and the manifest. The modes take turns in rounds, so background load on the
shared machine falls on each alike; the table gives the median and the best of the
rounds, and the ratio of the medians of each round's ratios.

    .venv/bin/python benchmarks/encode_throughput.py [--model EXPORT | --architecture conv]
        [--beam] [--no-tfds] [--repeats 5]

Without --model a VAE of the project's default ModelConfig (or of --architecture) is
exported untrained to a temporary folder: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from serving import contract as C  # noqa: E402


def default_export(folder: Path, architecture: str | None) -> tuple[Path, str]:
    """An untrained VAE of the default ModelConfig (or of `architecture`), exported ->
    (version folder, a short description)."""
    from model import ModelConfig, build_model
    from serving.export import export_model

    config = ModelConfig(image_shape=(28, 28, 1))
    if architecture:
        config = config.override(f"architecture={architecture}")
    vae = build_model(config, seed=0)
    vae(np.zeros((1, 28, 28, 1), np.float32))
    layers = "-".join(map(str, config.hidden_units))
    if config.architecture == "conv":
        dense = f", dense {config.hidden_units[0]}" if config.hidden_units else ""  # one dense layer
        layers = f"conv {'-'.join(map(str, config.conv_filters))}{dense}"
    described = f"{config.architecture} ({layers}), {config.latent_dim} latent units, untrained"
    return export_model(vae, folder, "vae", 1), described


def fashion_mnist(data_dir: str | None) -> np.ndarray:
    """All 70,000 images, train then test, uint8 (N, 28, 28, 1)."""
    import tensorflow_datasets as tfds

    from pipelines.config import DataConfig
    from pipelines.data import get_builder

    builder = get_builder(DataConfig.from_dict({"dataset": "fashion_mnist", "data_dir": data_dir}))
    ds = builder.as_dataset(split="train+test", shuffle_files=False, batch_size=-1)
    return tfds.as_numpy(ds)["image"]


def in_process(export: Path, pixels: np.ndarray, threads: int = 1) -> tuple[float, float]:
    """(seconds of the signature calls alone, seconds of load + first call + calls).

    With `threads` > 1, that many threads call the signature on interleaved batches."""
    started = time.perf_counter()
    encode = tf.saved_model.load(str(export)).signatures[C.ENCODE]
    encode(**{C.IMAGES: tf.constant(pixels[:C.MAX_BATCH])})  # the first call builds the graph
    calls = time.perf_counter()

    def work(first: int) -> None:
        for start in range(first * C.MAX_BATCH, len(pixels), threads * C.MAX_BATCH):
            encode(**{C.IMAGES: tf.constant(pixels[start:start + C.MAX_BATCH])})[C.Z_MEAN].numpy()

    if threads == 1:
        work(0)
    else:
        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
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


CALLS, LOADED = "in-process calls", "in-process load+calls"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an export (default: a default-config VAE, exported untrained)")
    parser.add_argument("--architecture", choices=["mlp", "conv"],
                        help="without --model: export a VAE of this architecture (default: ModelConfig's)")
    parser.add_argument("--data-dir", default=os.environ.get("TFDS_DATA_DIR"), help="tfds data directory")
    parser.add_argument("--repeats", type=int, default=5, help="rounds")
    parser.add_argument("--beam", action="store_true", help="also time the Beam pipeline")
    parser.add_argument("--no-tfds", action="store_true", help="skip the tfds input (PNG decoding)")
    args = parser.parse_args()

    from pipelines.encode import EncodeConfig
    from pipelines.sources import SourceSpec

    work = Path(tempfile.mkdtemp(prefix="encode_bench_"))
    try:
        if args.model:
            export, described = Path(args.model), args.model
        else:
            export, described = default_export(work / "exports", args.architecture)
        images = fashion_mnist(args.data_dir)
        np.save(work / "fmnist.npy", images)
        pixels = images.astype(np.float32) / 255.0
        common = dict(model=str(export), out=str(work / "out"), progress=False)
        npy = SourceSpec(kind="npy", paths=(str(work / "fmnist.npy"),))
        jobs = {"local npy": EncodeConfig(source=npy, **common)}
        if not args.no_tfds:
            jobs["local tfds"] = EncodeConfig(source=SourceSpec(kind="tfds", dataset="fashion_mnist", split="train+test",
                                                                data_dir=args.data_dir), **common)
        if args.beam:
            jobs["beam npy"] = EncodeConfig(source=npy, runner="beam", **common)
        times: dict[str, list[float]] = {CALLS: [], LOADED: [], "in-process calls, 2 threads": []}
        times |= {name: [] for name in jobs}
        for _ in range(args.repeats):  # rounds: each mode once per round
            calls, loaded = in_process(export, pixels)
            times[CALLS].append(calls)
            times[LOADED].append(loaded)
            times["in-process calls, 2 threads"].append(in_process(export, pixels, threads=2)[0])
            for name, config in jobs.items():
                times[name].append(job(config))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def ratio(name: str, reference: str) -> float:
        """The median over rounds of (reference seconds / name seconds) in the same round."""
        return statistics.median(r / s for r, s in zip(times[reference], times[name]))

    print(f"\n70,000 Fashion-MNIST images, export {described}, {args.repeats} rounds, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| mode | seconds, median (best) | rows/s (median) | vs calls | vs load+calls |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} ({min(values):.2f}) | {70_000 / median:,.0f} | "
              f"{ratio(name, CALLS):.2f} | {ratio(name, LOADED):.2f} |")
    print("\nlocal npy vs in-process calls, each round: "
          + " ".join(f"{c / j:.2f}" for c, j in zip(times[CALLS], times["local npy"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
