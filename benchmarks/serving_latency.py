"""generate(16) latency: over gRPC on loopback (`vae serve` in a subprocess, the project's
client) beside the same signature called in-process, in the same run.

    .venv/bin/python benchmarks/serving_latency.py [--requests 2000] [--export-dir exports/vae]

Without --export-dir it exports the default model (latent 16, MLP 512-256; random weights:
latency does not depend on the weights). The in-process rows call the same signature of
the same export: through `Servable.run` (the server's own execution code, so the
difference is exactly what gRPC, protos and the handler add) and through the public
`signature(**tensors)`. Prints p50/p90/p99 in milliseconds and the p50 overhead of the
gRPC path (target: <= 1 ms).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from serving import contract as C  # noqa: E402


# === Shared with serving_throughput.py ===
ROOT = Path(__file__).resolve().parents[1]
# `vae` with this interpreter: the one main of pipelines/cli.py.
VAE = (sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))")


def export_default_model(base_dir: Path, config=None) -> Path:
    """Exports the default ModelConfig (28x28x1, latent 16, MLP 512-256), or `config`, with
    random weights; -> the version folder."""
    from model import ModelConfig, build_model
    from serving.export import export_model

    vae = build_model(config or ModelConfig(), seed=0)
    vae(np.zeros((1, *vae.image_shape), "float32"))
    return export_model(vae, base_dir)


def model_path(export_dir: str | None, overrides: tuple[str, ...] | list[str] = ()) -> tuple[Path, contextlib.ExitStack]:
    """The model folder to serve (<base>/<name>): the given one, or a fresh export of the
    default ModelConfig with `overrides` (`FIELD=VALUE` assignments) applied."""
    from model import ModelConfig

    stack = contextlib.ExitStack()
    if export_dir:
        return Path(export_dir), stack
    config = ModelConfig()
    for assignment in overrides:
        config = config.override(assignment)
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vae-bench-")))
    return export_default_model(tmp, config).parent, stack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# target -> process id of each running `serve_subprocess` (serving_throughput.py reads
# the server's CPU time from it).
SERVER_PIDS: dict[str, int] = {}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serve_subprocess(model_dir: Path, batching: bool, extra: tuple[str, ...] = ()):
    """Runs `vae serve` on a free port; yields the target; SIGTERMs it."""
    from serving.client import VAEClient

    port = free_port()
    command = [*VAE, "serve", "--model-base-path", str(model_dir), "--port", str(port), *extra]
    if batching:
        parameters = ROOT / "serving" / "batching_parameters.txt"
        command += ["--enable-batching", "--batching-parameters-file", str(parameters)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    try:
        with VAEClient(target) as client:
            client.wait_until_ready(timeout=120)
        SERVER_PIDS[target] = process.pid
        yield target
    finally:
        SERVER_PIDS.pop(target, None)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms)
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "mean": float(values.mean())}


def load_average() -> str:
    """The 1-minute load average (other jobs on the machine skew every figure)."""
    return f"{os.getloadavg()[0]:.2f}"


# === Latency ===
def latest_generate(model_dir: Path):
    """(the in-process `Servable` of the latest version, its `generate` signature)."""
    from serving.layout import list_versions
    from serving.servable import Servable

    version = list_versions(model_dir)[-1]
    servable = Servable(C.MODEL_NAME, version, model_dir / str(version))
    return servable, servable.signatures[C.GENERATE]


def generate_inputs(seed: int, num_samples: int) -> dict[str, np.ndarray]:
    """The `generate` request of one timed call: `num_samples` images, seed (seed, 0)."""
    return {C.NUM_SAMPLES: np.int32(num_samples), C.SEED: np.asarray([seed, 0], np.int64),
            C.TEMPERATURE: np.float32(1.0)}


def time_calls(call, requests: int, offset: int = 0) -> list[float]:
    samples = []
    for i in range(offset, offset + requests):
        start = time.perf_counter_ns()
        call(i)
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="timed calls per path")
    parser.add_argument("--rounds", type=int, default=10, help="the paths take turns this many times")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--export-dir", help="a model folder with versions (default: export one)")
    parser.add_argument("--enable-batching", action="store_true", help="serve with batching on")
    parser.add_argument("--serve-args", default="", help="extra `vae serve` flags, e.g. '--tf-intra-op-threads 1'")
    args = parser.parse_args()

    import tensorflow as tf

    from serving.client import VAEClient

    model_dir, cleanup = model_path(args.export_dir)
    with cleanup:
        servable, signature = latest_generate(model_dir)

        def inputs(i: int) -> dict[str, np.ndarray]:
            return generate_inputs(i, args.num_samples)

        def public_call(i: int) -> np.ndarray:
            tensors = {k: tf.constant(v) for k, v in inputs(i).items()}
            return signature.function(**tensors)[C.IMAGES].numpy()

        with serve_subprocess(model_dir, args.enable_batching, tuple(args.serve_args.split())) as target, \
                VAEClient(target) as client:
            paths = {
                "in-process Servable.run": lambda i: servable.run(signature, inputs(i), (C.IMAGES,)),
                "in-process signature()": public_call,
                "gRPC VAEClient.generate": lambda i: client.generate(args.num_samples, seed=i),
            }
            np.testing.assert_allclose(client.generate(args.num_samples, seed=1), public_call(1), atol=1e-6)
            for call in paths.values():
                time_calls(call, args.warmup)
            loads = [load_average()]
            rows: dict[str, list[float]] = {name: [] for name in paths}
            per_round = max(1, args.requests // args.rounds)
            for r in range(args.rounds):  # take turns, so background load hits every path alike
                for name, call in paths.items():
                    rows[name] += time_calls(call, per_round, r * per_round)
            loads.append(load_average())

    stats = {name: percentiles(samples) for name, samples in rows.items()}
    print(f"generate({args.num_samples}): {per_round * args.rounds} timed calls per path in {args.rounds} "
          f"interleaved rounds after {args.warmup} warm-up; batching {'on' if args.enable_batching else 'off'}; "
          f"serve flags [{args.serve_args}]; load average {loads[0]} -> {loads[1]}")
    print(f"{'path':<25} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, row in stats.items():
        print(f"{name:<25} {row['p50']:8.3f} {row['p90']:8.3f} {row['p99']:8.3f} {row['mean']:8.3f}")
    remote = stats["gRPC VAEClient.generate"]["p50"]
    for baseline in ("in-process Servable.run", "in-process signature()"):
        print(f"p50 overhead of gRPC vs {baseline}: {remote - stats[baseline]['p50']:.3f} ms (target <= 1 ms)")


if __name__ == "__main__":
    main()
