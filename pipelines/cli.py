"""The `vae` console script: one `main()`; each package's `cli.register` adds its subcommands.

    train, export   pipelines/train/cli.py
    tune            pipelines/tune/cli.py
    encode          pipelines/encode/cli.py
    serve, generate serving/cli.py

Each subcommand parses its flags and calls one library function. Exit codes: 0 done;
2 bad usage or bad input (a `core.errors.UserError`: the message says what was wrong and
what to do); 1 failure (e.g. a server that cannot be reached); 130 interrupted.
Building the parser imports neither TensorFlow nor any package that does, so `vae --help`
answers at once; TensorFlow's C++ start-up lines are hidden unless `-v` is given (before or
after the subcommand). Old spellings of renamed flags keep working and warn
(`core.cli`). The four top-level packages have generic names (core, model, serving,
pipelines): before importing any of them, `main` checks that they are this installation's
and otherwise names the package that shadows ours (exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path

# The modules whose `register(subparsers)` add subcommands, in the order `--help` lists them.
SUBCOMMAND_MODULES = ("pipelines.train.cli", "pipelines.tune.cli", "serving.cli", "pipelines.encode.cli")
DISTRIBUTION = "vae-system"  # pyproject.toml's project name
# The top-level packages the distribution installs: generic names that another
# distribution in the same environment may also install (`check_own_packages`).
OWN_PACKAGES = ("core", "model", "serving", "pipelines")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from core.cli import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="vae", description="A production VAE on TensorFlow/Keras: train, tune, export, "
        "serve, generate, batch-encode.",
        epilog="Exit codes: 0 done, 2 bad usage or bad input, 1 failure, 130 interrupted.\n\n"
        "The help of a command: vae COMMAND --help",
        formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the installed version and exit")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and TensorFlow's own start-up lines (also after the command)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for sub in subparsers.choices.values():  # what every subcommand shares, added in one place
        sub.formatter_class = HelpFormatter
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="debug logging, and TensorFlow's own start-up lines")
    return parser


def package_version() -> str:
    """The installed version of the project (its distribution's metadata; no TensorFlow)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


@contextlib.contextmanager
def _quiet_stderr():
    """Sends what C++ code writes to stderr (fd 2) to a temporary file meanwhile; replays it
    if the block fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _import_tensorflow_quietly() -> None:
    """TensorFlow prints oneDNN and CUDA-probing lines on import, before its log level
    applies; every subcommand loads it (the serving protos too), so load it silently here."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _quiet_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe, once, while quiet


def check_own_packages() -> list[str]:
    """The top-level packages of ours that Python would import from elsewhere (another
    distribution with the same name earlier on sys.path), as "NAME from PATH"; [] when all
    four come from this installation. Finds, does not import."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    foreign = []
    for name in OWN_PACKAGES:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin).resolve() if spec and spec.origin else None
        if origin is None or origin.parent.parent != root:
            foreign.append(f"{name!r} from {origin.parent if origin else 'nowhere'}")
    return foreign


def main(argv: list[str] | None = None) -> int:
    foreign = check_own_packages()
    if foreign:  # before any import of them: it would fail, or run another project's code
        print(f"vae: error: {', '.join(foreign)} shadows this project's package (installed at "
              f"{Path(__file__).resolve().parents[1]}); install {DISTRIBUTION} in its own virtual "
              "environment (bash scripts/setup.sh makes .venv)", file=sys.stderr)
        return 1
    from core.errors import EXIT_FAILURE, EXIT_USAGE, UserError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("absl", "tensorflow"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        if not getattr(args, "print_config", False):  # printing a config needs no TensorFlow
            _import_tensorflow_quietly()
    try:
        return args.func(args)
    except UserError as err:
        print(f"vae {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"vae {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a failure, not the user's input: say so, keep the traceback
        logging.getLogger("vae").debug("traceback", exc_info=True)
        print(f"vae {args.command}: failed: {type(err).__name__}: {err}"
              + ("" if args.verbose else " (run with -v for the traceback)"), file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
