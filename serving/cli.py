"""The serving subcommands of `vae`: `serve` and `generate`.

`pipelines/cli.py` calls `register(subparsers)`; each subcommand parses its flags and
calls one library function. Each `func` returns an exit code (0 done, 1 failure, e.g. a
server that cannot be reached) and raises a `core.errors.UserError` (`ConfigError`) for
bad flags, which the main turns into exit code 2. Importing this module and registering
imports neither TensorFlow nor grpc: `vae --help` stays fast.
"""

from __future__ import annotations

import os
import sys

from core.cli import add_old_spelling
from core.config import ConfigError
from core.errors import EXIT_FAILURE, EXIT_OK
from serving import contract as C  # (no TensorFlow import)


DEFAULT_NUM_VERSIONS = 2  # versions `vae serve --model-base-path` keeps loaded


def register(subparsers) -> None:
    """Adds `serve` and `generate` to an argparse subparsers object."""
    _add_serve(subparsers)
    _add_generate(subparsers)


# === serve ===
SERVE_EXAMPLES = f"""\
Examples:
  vae serve --model-base-path exports/vae                          # gRPC on {C.DEFAULT_HOST}:{C.GRPC_PORT}
  vae serve --model-base-path exports/vae --rest-api-port {C.REST_PORT}     # and REST
  vae serve --model-base-path exports/vae --version-label stable=1 --version-label canary=2
  vae serve --model-config-file serving/models.config --model-config-file-poll-wait-seconds 30
  vae serve --model-base-path exports/vae --rest-api-port {C.REST_PORT} \\
      --monitoring-config-file serving/monitoring.config              # + Prometheus metrics
  curl -d '{{"signature_name": "generate", "inputs": {{"num_samples": 4, "seed": [7, 0], "temperature": 1.0}}}}' \\
      localhost:{C.REST_PORT}/v1/models/{C.MODEL_NAME}:predict
"""


def _add_serve(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve exported versions over TF Serving's gRPC API and, with --rest-api-port, its REST API",
        description="Serves the integer version folders under --model-base-path (TF Serving's "
        "layout, e.g. exports/vae, as `vae export` writes it), or every model of a "
        "--model-config-file, with TF Serving's gRPC API (PredictionService.Predict, "
        "GetModelMetadata, ModelService.GetModelStatus and HandleReloadConfigRequest, plus "
        "grpc.health.v1) and, with --rest-api-port, TF Serving's REST API on a second port "
        "(/v1/models/NAME[/versions/N|/labels/L][:predict|/metadata]). Exports of every model kind "
        "(vae, cvae, m2) are served with their own signatures. New versions are picked up while "
        "running. SIGTERM shuts down gracefully.",
        epilog=SERVE_EXAMPLES,
    )
    p.add_argument("--model-base-path", metavar="DIR",
                   help="the model's export folder holding its integer version folders (e.g. exports/vae); "
                   "required unless --model-config-file is given (no default)")
    p.add_argument("--model-name", help=f"the name requests use for that model (default {C.MODEL_NAME!r})")
    p.add_argument("--model-config-file", metavar="FILE",
                   help="TF Serving's models.config (ModelServerConfig text proto, e.g. serving/models.config): "
                   "serve every model it lists with its model_version_policy (latest, all, specific) and "
                   "version_labels, instead of --model-base-path/--model-name/--num-versions/--version-label. "
                   "A relative base_path in the file is resolved against the file's folder (TF Serving "
                   "accepts only absolute ones; default: none, one model from --model-base-path)")
    p.add_argument("--model-config-file-poll-wait-seconds", type=float, default=0.0, metavar="SECONDS",
                   help="read --model-config-file again this often and apply changes: models added, "
                   "removed, policies and labels (0: read once)")
    p.add_argument("--allow-version-labels-for-unavailable-models", action="store_true",
                   help="let a config's new version label name a version that is not loaded yet (needed for "
                   "labels at start-up, as in TF Serving)")
    p.add_argument("--host", default=C.DEFAULT_HOST,
                   help="interface to bind, for gRPC and REST (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=C.GRPC_PORT, help="gRPC port (0: any free port)")
    p.add_argument("--poll-seconds", type=float, default=1.0, metavar="SECONDS",
                   help="how often --model-base-path is checked for new versions")
    p.add_argument("--num-versions", type=int, metavar="N",
                   help=f"newest versions kept loaded, 0: all (default {DEFAULT_NUM_VERSIONS})")
    p.add_argument("--version-label", action="append", default=[], metavar="LABEL=VERSION",
                   help="a name requests may use for a version, e.g. stable=1 (repeatable; default: none)")
    p.add_argument("--enable-batching", action="store_true",
                   help="join concurrent requests of one signature into one call ("
                   f"{', '.join((*C.ANY_ROW_SIGNATURES, C.GENERATE))})")
    p.add_argument("--batching-parameters-file", metavar="FILE",
                   help="TF Serving BatchingParameters text proto (default: the built-in batching "
                   "parameters); needs --enable-batching")
    p.add_argument("--max-workers", type=int, default=16, metavar="N", help="gRPC handler threads")
    p.add_argument("--tls-cert", metavar="PEM", help="certificate chain; enables TLS on gRPC (default: plaintext)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert, given with it (default: none)")
    p.add_argument("--tls-client-ca", metavar="PEM",
                   help="CA of client certificates: requires them (mutual TLS; default: not required)")
    p.add_argument("--grace-seconds", type=float, default=5.0, metavar="SECONDS",
                   help="how long in-flight requests may finish after SIGTERM")
    p.add_argument("--tf-intra-op-threads", type=int, default=0, metavar="N", help="TensorFlow intra-op threads (0: auto)")
    p.add_argument("--tf-inter-op-threads", type=int, default=0, metavar="N", help="TensorFlow inter-op threads (0: auto)")
    p.add_argument("--cpus", default="", metavar="ID[,ID...]",
                   help="confine the server to these CPUs, comma-separated (like taskset -c 0,1; default: all)")
    p.add_argument("--rest-api-port", type=int, metavar="PORT",
                   help=f"TF Serving's REST API on this port, same interface as --port (e.g. {C.REST_PORT}; "
                   "0: any free port; default: no REST API)")
    p.add_argument("--rest-api-num-threads", type=int, default=8, metavar="N", help="REST worker threads")
    p.add_argument("--monitoring-config-file", metavar="FILE",
                   help="TF Serving MonitoringConfig text proto, e.g. serving/monitoring.config: Prometheus "
                   "metrics on the REST port (needs --rest-api-port; default: no metrics)")
    p.set_defaults(func=run_serve)


def server_options(args):
    """The `ServerOptions` that `vae serve` flags describe.

    Raises:
        ConfigError: a flag is malformed or out of range (the message names it).
    """
    from serving.batching import BatchingOptions
    from serving.server import ServerOptions

    model = _model_source(args)
    labels = []
    for item in args.version_label:
        label, sep, version = item.partition("=")
        if not sep or not label or not version.isdigit():
            raise ConfigError(f"--version-label must look like LABEL=VERSION, got {item!r}")
        labels.append((label, int(version)))
    try:
        cpus = tuple(int(cpu) for cpu in args.cpus.split(",")) if args.cpus else ()
    except ValueError:
        raise ConfigError(f"--cpus must be CPU ids separated by commas, got {args.cpus!r}") from None
    if not set(cpus) <= os.sched_getaffinity(0):
        raise ConfigError(f"--cpus {args.cpus} not available; this process may use {sorted(os.sched_getaffinity(0))}")
    batching = None
    if args.batching_parameters_file and not args.enable_batching:
        raise ConfigError("--batching-parameters-file needs --enable-batching (as in TF Serving)")
    if args.enable_batching:
        batching = (
            BatchingOptions.from_file(args.batching_parameters_file)
            if args.batching_parameters_file
            else BatchingOptions()
        )
    rest = _rest_options(args)
    options = ServerOptions(
        **model,
        host=args.host,
        port=args.port,
        poll_seconds=args.poll_seconds,
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
        rest=rest,
    )
    if options.model_config_file:  # a bad file is a flag error now, not a failure at start
        from serving.registry import startup_config

        startup_config(options.model_config_file, options.allow_version_labels_for_unavailable_models)
    return options


def _model_source(args) -> dict:
    """The ServerOptions fields naming what is served: one model's flags, or a config file.

    Raises:
        ConfigError: both or neither.
    """
    single = {"--model-base-path": args.model_base_path, "--model-name": args.model_name,
              "--num-versions": args.num_versions, "--version-label": args.version_label}
    if not args.model_config_file:
        if args.model_base_path is None:
            raise ConfigError("give --model-base-path (one model) or --model-config-file (a models.config)")
        if args.model_config_file_poll_wait_seconds or args.allow_version_labels_for_unavailable_models:
            raise ConfigError("--model-config-file-poll-wait-seconds and --allow-version-labels-for-unavailable-"
                              "models need --model-config-file")
        return {"model_base_path": args.model_base_path, "model_name": args.model_name or C.MODEL_NAME,
                "num_versions": DEFAULT_NUM_VERSIONS if args.num_versions is None else args.num_versions}
    given = [flag for flag, value in single.items() if value not in (None, [])]
    if given:
        raise ConfigError(f"--model-config-file excludes {', '.join(given)}: the file names the models, "
                          "their version policies and labels")
    return {"model_config_file": args.model_config_file,
            "model_config_poll_seconds": args.model_config_file_poll_wait_seconds,
            "allow_version_labels_for_unavailable_models": args.allow_version_labels_for_unavailable_models}


def _rest_options(args):
    """The `RestOptions` of `--rest-api-port` and friends, or None without a REST port.

    Raises:
        ConfigError: --monitoring-config-file without --rest-api-port, or a file that is
            not a MonitoringConfig.
    """
    if args.rest_api_port is None:
        if args.monitoring_config_file:
            raise ConfigError("--monitoring-config-file needs --rest-api-port (the metrics page is on the REST port)")
        return None
    from serving.rest import RestOptions

    rest = RestOptions(port=args.rest_api_port, num_threads=args.rest_api_num_threads,
                       monitoring_config_file=args.monitoring_config_file)
    rest.monitoring()  # a bad file is a flag error now, not a failure at start
    return rest


def run_serve(args) -> int:
    """`vae serve`: runs until SIGTERM or SIGINT; 1 if the address cannot be bound.

    Raises:
        ConfigError: bad flags.
    """
    from serving.server import BindError, serve

    options = server_options(args)
    try:
        return serve(options)
    except (BindError, OSError) as err:  # the address is taken, or the CPUs went away
        print(f"vae serve: error: {err}", file=sys.stderr)
        return EXIT_FAILURE


# === generate ===
DEFAULT_NUM_SAMPLES = 16  # images of `vae generate` without --num-samples, --labels or --per-class
GENERATE_EXAMPLES = f"""\
Examples:
  vae generate --seed 1 --output samples.png                       # {DEFAULT_NUM_SAMPLES} images from {C.DEFAULT_HOST}:{C.GRPC_PORT}
  vae generate -n 64 --temperature 0.8 --target serving-host:{C.GRPC_PORT} --wait 30
  vae generate --labels 0,0,7,7 --output shoes.png                # a cvae on labels, or an m2
  vae generate --per-class 8 --num-classes 10                      # one row per class
  vae generate --version-label canary                              # the version labelled canary
  vae generate --version 3 --tls-ca ca.pem --target vae.example.com:443
"""


def _add_generate(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="ask a server for generated images and write a PNG grid",
        description="Calls the generate signature of TF Serving or `vae serve` over gRPC and writes "
        "the images as one PNG grid. The same --seed gives the same images on any server. An "
        "unconditional model (kind vae) draws --num-samples images; a label-conditioned model "
        "(cvae on labels, m2) draws one image per label: --labels, or --per-class N for a grid "
        "with one row of N images per class. A cvae conditioned on a half has no generate "
        "signature (it completes images: its complete signature).",
        epilog=GENERATE_EXAMPLES,
    )
    p.add_argument("--target", default=f"{C.DEFAULT_HOST}:{C.GRPC_PORT}", metavar="HOST:PORT",
                   help="the gRPC address of the server")
    p.add_argument("-n", "--num-samples", type=int, metavar="N",
                   help=f"images of an unconditional model (default {DEFAULT_NUM_SAMPLES})")
    p.add_argument("--labels", metavar="K[,K...]",
                   help="class labels, comma-separated: one image per label (a label-conditioned model; "
                   "default: none, excludes --num-samples and --per-class)")
    p.add_argument("--per-class", type=int, metavar="N",
                   help="N images of each class, one grid row per class (a label-conditioned model; "
                   "default: none, excludes --num-samples and --labels)")
    p.add_argument("--num-classes", type=int, metavar="K",
                   help="classes for --per-class (default: the width of the model's classify "
                   "signature; a cvae has none, so give it)")
    p.add_argument("--seed", type=int, help="generation seed (default: random)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scale of the latent draws")
    output = p.add_argument("--output", default="generated.png", metavar="FILE.png", help="PNG file to write")
    add_old_spelling(p, output, "--out")
    p.add_argument("--model-name", default=C.MODEL_NAME, help="the served model's name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, metavar="N",
                       help="ask for this version of the model (default: the latest loaded)")
    which.add_argument("--version-label", metavar="LABEL",
                       help="ask for the version behind this label, e.g. stable (default: the latest loaded)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="deadline per request")
    p.add_argument("--tls-ca", metavar="PEM",
                   help="CA of the server certificate; enables TLS (default: plaintext)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to SECONDS for the server to have a model version loaded (0: do not wait)")
    p.set_defaults(func=run_generate)


def run_generate(args) -> int:
    """`vae generate`: 0 with the PNG written, 1 if the server failed or was unreachable.

    Raises:
        ConfigError: bad flags (a negative count, an unreadable CA file).
    """
    from serving.client import ServingError, TLSOptions
    from serving.grid import generate_grid

    labels = _labels_flag(args)
    num_samples = DEFAULT_NUM_SAMPLES if args.num_samples is None else args.num_samples
    if num_samples < 0:
        raise ConfigError(f"--num-samples must be >= 0, got {num_samples}")
    try:
        tls = TLSOptions.from_files(args.tls_ca) if args.tls_ca else None
    except OSError as err:
        raise ConfigError(f"--tls-ca {args.tls_ca}: {err.strerror or err}") from None
    columns = None
    try:
        if args.per_class is not None:
            num_classes = args.num_classes or _served_num_classes(args, tls)
            labels = [k for k in range(num_classes) for _ in range(args.per_class)]
            columns = max(1, args.per_class)
        path = generate_grid(
            args.target, args.output, num_samples, args.seed, args.temperature,
            args.model_name, args.timeout, tls, args.wait, labels=labels, columns=columns,
            version=args.version, version_label=args.version_label,
        )
    except (ServingError, TimeoutError) as err:
        print(f"vae generate: error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    print(path)
    return EXIT_OK


def _labels_flag(args) -> list[int] | None:
    """The labels of `--labels`, or None; checks the label flags against each other.

    Raises:
        ConfigError: --labels, --per-class and -n combined, a malformed or negative label.
    """
    given = [flag for flag, value in (("--labels", args.labels), ("--per-class", args.per_class),
                                      ("--num-samples", args.num_samples)) if value is not None]
    if len(given) > 1:
        raise ConfigError(f"give one of --num-samples, --labels and --per-class, got {' and '.join(given)}")
    if args.num_classes is not None and args.per_class is None:
        raise ConfigError("--num-classes goes with --per-class")
    if args.per_class is not None and args.per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {args.per_class}")
    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"--num-classes must be >= 1, got {args.num_classes}")
    if args.labels is None:
        return None
    try:
        labels = [int(item) for item in args.labels.split(",") if item.strip()]
    except ValueError:
        raise ConfigError(f"--labels must be integers separated by commas, got {args.labels!r}") from None
    if not labels or min(labels) < 0:
        raise ConfigError(f"--labels must be class numbers >= 0, got {args.labels!r}")
    return labels


def _served_num_classes(args, tls) -> int:
    """K of the served model, from its signatures (M2's classify).

    Raises:
        ConfigError: the signatures do not show K (give --num-classes).
    """
    from serving.client import VAEClient

    with VAEClient(args.target, args.model_name, args.timeout, tls=tls, version=args.version,
                   version_label=args.version_label) as client:
        if args.wait > 0:
            client.wait_until_ready(timeout=args.wait)
        count = client.num_classes()
    if count is None:
        raise ConfigError(f"{args.model_name!r} at {args.target} does not show its number of classes "
                          f"(no classify signature); give --num-classes")
    return count
