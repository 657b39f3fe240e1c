"""The serving subcommands of `vae`: `export`, `serve` and `generate`.

`pipelines/cli.py` calls `register(subparsers)`; each subcommand parses its flags and
calls one library function. `python -m serving.cli ...` runs them without the main CLI.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from serving import contract as C  # noqa: E402  (no TensorFlow import)


def register(subparsers) -> None:
    """Adds `export`, `serve` and `generate` to an argparse subparsers object."""
    _add_export(subparsers)
    _add_serve(subparsers)
    _add_generate(subparsers)


# === export ===
def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained workdir as a versioned SavedModel",
        description="Writes <base-dir>/<model-name>/<version>/ (SavedModel with the encode, decode, "
        "generate, reconstruct and log_likelihood signatures, plus assets.extra/ with the run "
        "config, metrics and TF Serving warm-up requests), atomically.",
    )
    p.add_argument("--workdir", required=True, help="a finished `vae train` workdir")
    p.add_argument("--base-dir", required=True, help="export root (e.g. exports)")
    p.add_argument("--model-name", default=C.MODEL_NAME)
    p.add_argument("--version", type=int, help="version number (default: the next one)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from serving.export import export_workdir

    try:
        path = export_workdir(args.workdir, args.base_dir, args.model_name, args.version)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"vae export: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


# === serve ===
def _add_serve(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve exported versions over TF Serving's gRPC API",
        description="Serves the integer version folders under --model-base-path (TF Serving's "
        "layout, e.g. exports/vae) with TF Serving's gRPC API: PredictionService.Predict, "
        "GetModelMetadata and ModelService.GetModelStatus, plus grpc.health.v1. New versions "
        "are picked up while running. SIGTERM shuts down gracefully.",
    )
    p.add_argument("--model-base-path", required=True, help="folder holding the version folders")
    p.add_argument("--model-name", default=C.MODEL_NAME)
    p.add_argument("--host", default=C.DEFAULT_HOST, help="interface to bind (default loopback)")
    p.add_argument("--port", type=int, default=C.GRPC_PORT, help="gRPC port (0: any free port)")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="version polling interval")
    p.add_argument("--num-versions", type=int, default=2, help="newest versions kept loaded (0: all)")
    p.add_argument("--version-label", action="append", default=[], metavar="LABEL=VERSION")
    p.add_argument("--enable-batching", action="store_true", help="batch concurrent requests")
    p.add_argument("--batching-parameters-file", help="TF Serving BatchingParameters text proto")
    p.add_argument("--max-workers", type=int, default=16, help="gRPC handler threads")
    p.add_argument("--tls-cert", help="PEM certificate chain (enables TLS)")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--tls-client-ca", help="PEM CA for client certificates (mutual TLS)")
    p.add_argument("--grace-seconds", type=float, default=5.0, help="shutdown grace period")
    p.add_argument("--tf-intra-op-threads", type=int, default=0, help="TensorFlow intra-op threads (0: auto)")
    p.add_argument("--tf-inter-op-threads", type=int, default=0, help="TensorFlow inter-op threads (0: auto)")
    p.add_argument("--cpus", default="", metavar="ID[,ID...]",
                   help="confine the server to these CPUs, comma-separated (like taskset -c 0,1; default: all)")
    p.set_defaults(func=run_serve)


def server_options(args):
    """The `ServerOptions` that `vae serve` flags describe."""
    from serving.batching import BatchingOptions
    from serving.server import ServerOptions

    labels = []
    for item in args.version_label:
        label, sep, version = item.partition("=")
        if not sep or not label or not version.isdigit():
            raise ValueError(f"--version-label must look like LABEL=VERSION, got {item!r}")
        labels.append((label, int(version)))
    try:
        cpus = tuple(int(cpu) for cpu in args.cpus.split(",")) if args.cpus else ()
    except ValueError:
        raise ValueError(f"--cpus must be CPU ids separated by commas, got {args.cpus!r}") from None
    if not set(cpus) <= os.sched_getaffinity(0):
        raise ValueError(f"--cpus {args.cpus} not available; this process may use {sorted(os.sched_getaffinity(0))}")
    batching = None
    if args.batching_parameters_file and not args.enable_batching:
        raise ValueError("--batching-parameters-file needs --enable-batching (as in TF Serving)")
    if args.enable_batching:
        batching = (
            BatchingOptions.from_file(args.batching_parameters_file)
            if args.batching_parameters_file
            else BatchingOptions()
        )
    return ServerOptions(
        model_base_path=args.model_base_path,
        model_name=args.model_name,
        host=args.host,
        port=args.port,
        poll_seconds=args.poll_seconds,
        num_versions=args.num_versions,
        version_labels=tuple(labels),
        batching=batching,
        max_workers=args.max_workers,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        tls_client_ca_file=args.tls_client_ca,
        grace_seconds=args.grace_seconds,
        tf_intra_op_threads=args.tf_intra_op_threads,
        tf_inter_op_threads=args.tf_inter_op_threads,
        cpus=cpus,
    )


def run_serve(args) -> int:
    from serving.server import serve

    try:
        options = server_options(args)
    except (ValueError, OSError) as err:
        print(f"vae serve: error: {err}", file=sys.stderr)
        return 2
    return serve(options)


# === generate ===
def _add_generate(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="ask a server for generated images and write a PNG grid",
        description="Calls the generate signature of TF Serving or `vae serve` and writes the "
        "images as one PNG grid. The same --seed gives the same images on any server.",
    )
    p.add_argument("--target", default=f"{C.DEFAULT_HOST}:{C.GRPC_PORT}", help="host:port")
    p.add_argument("-n", "--num-samples", type=int, default=16)
    p.add_argument("--seed", type=int, help="generation seed (default: random)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--out", default="generated.png", help="PNG file to write")
    p.add_argument("--model-name", default=C.MODEL_NAME)
    p.add_argument("--timeout", type=float, default=10.0, help="deadline per request, seconds")
    p.add_argument("--tls-ca", help="PEM CA of the server certificate (enables TLS)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to SECONDS for the server to have a model version loaded")
    p.set_defaults(func=run_generate)


def run_generate(args) -> int:
    from serving.client import ServingError, TLSOptions
    from serving.grid import generate_grid

    tls = TLSOptions.from_files(args.tls_ca) if args.tls_ca else None
    try:
        path = generate_grid(
            args.target, args.out, args.num_samples, args.seed, args.temperature,
            args.model_name, args.timeout, tls, args.wait,
        )
    except (ServingError, TimeoutError) as err:
        print(f"vae generate: error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.cli export|serve|generate ...`."""
    parser = argparse.ArgumentParser(prog="python -m serving.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
