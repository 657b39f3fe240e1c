"""`vae serve` and `vae generate` through `serving.cli.register` (and `vae`'s one main)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving_testlib import IMAGE_SHAPE, free_port

from core.config import ConfigError
from core.errors import UserError
from serving import contract as C
from serving.cli import register, server_options
from serving.client import VAEClient
from serving.grid import MIN_SIDE, image_grid, upscale

ROOT = Path(__file__).resolve().parents[2]
# `vae` itself, whichever way it is installed: the one main of pipelines/cli.py.
VAE = [sys.executable, "-c", "import sys; from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"]


def parse(*argv: str):
    parser = argparse.ArgumentParser(prog="vae")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run(*argv: str) -> int:
    args = parse(*argv)
    return args.func(args)


def test_generate_writes_a_png_grid(server, client, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert run("generate", "--target", f"127.0.0.1:{server.port}", "-n", "9", "--seed", "3", "--out", str(out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.mode == "L"
        pixels = np.asarray(picture)
    side = 3 * (IMAGE_SHAPE[0] + 2) + 2  # 92 px of tiles, enlarged 6x to 552 px
    factor = -(-MIN_SIDE // side)
    assert pixels.shape == (side * factor, side * factor) and max(pixels.shape) >= MIN_SIDE
    tiles = image_grid(client.generate(9, seed=3))
    assert tiles.shape == (side, side)
    np.testing.assert_array_equal(pixels[::factor, ::factor], tiles)  # nearest neighbour:
    np.testing.assert_array_equal(pixels, upscale(tiles))  # every pixel a factor x factor block


def test_generate_asks_the_server_for_the_version_or_label_given(server, tmp_path, capsys):
    """The server holds version 1 and no labels: --version 1 draws, --version 2 and an
    unknown --version-label are refused by the server, so both reached it."""
    target = f"127.0.0.1:{server.port}"
    out = tmp_path / "v1.png"
    assert run("generate", "--target", target, "-n", "4", "--seed", "1", "--version", "1", "--output", str(out)) == 0
    assert out.is_file() and capsys.readouterr().out.strip() == str(out)
    assert run("generate", "--target", target, "--version", "2", "--output", str(tmp_path / "v2.png")) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert run("generate", "--target", target, "--version-label", "stable", "--output", str(tmp_path / "l.png")) == 1
    assert "stable" in capsys.readouterr().err
    assert not (tmp_path / "v2.png").exists() and not (tmp_path / "l.png").exists()


def test_generate_against_no_server_fails_cleanly(tmp_path, capsys):
    target = f"127.0.0.1:{free_port()}"
    code = run("generate", "--target", target, "--timeout", "1", "--out", str(tmp_path / "x.png"))
    assert code == 1 and "UNAVAILABLE" in capsys.readouterr().err
    code = run("generate", "--target", target, "--timeout", "1", "--wait", "0.5", "--out", str(tmp_path / "x.png"))
    assert code == 1 and "no version" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_generate_bad_flags_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="--num-samples must be >= 0"):
        run("generate", "-n", "-1", "--out", str(tmp_path / "x.png"))
    with pytest.raises(ConfigError, match="--tls-ca"):
        run("generate", "--tls-ca", str(tmp_path / "no-such-ca.pem"), "--out", str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_serve_on_a_taken_port_fails_with_exit_code_1(server, export_dir, capsys):
    code = run("serve", "--model-base-path", str(export_dir.parent), "--port", str(server.port),
               "--poll-seconds", "0")
    assert code == 1 and f"cannot bind {C.DEFAULT_HOST}:{server.port}" in capsys.readouterr().err
    assert server.manager.available_versions == [1]  # the running server is untouched


def test_vae_main_answers_bad_serve_flags_with_exit_code_2(capsys):
    from pipelines.cli import main

    assert main(["serve", "--model-base-path", "x", "--port", "70000"]) == 2
    assert "ServerOptions.port must be within [0, 65535], got 70000" in capsys.readouterr().err


def test_registering_the_subcommands_imports_neither_tensorflow_nor_grpc():
    """`vae --help` must answer at once: the parser is built from serving.cli alone."""
    code = (
        "import argparse, sys\n"
        "from serving.cli import register\n"
        "parser = argparse.ArgumentParser(prog='vae')\n"
        "register(parser.add_subparsers(dest='command'))\n"
        "print(sorted(m for m in ('tensorflow', 'grpc', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_serve_flags_become_server_options():
    options = server_options(parse(
        "serve", "--model-base-path", "exports/vae", "--port", "9000", "--version-label", "stable=3",
        "--enable-batching", "--batching-parameters-file", str(ROOT / "serving" / "batching_parameters.txt"),
    ))
    assert (options.port, options.host, options.version_labels) == (9000, C.DEFAULT_HOST, (("stable", 3),))
    assert options.batching is not None and options.batching.max_batch_size > 1
    assert server_options(parse("serve", "--model-base-path", "x")).batching is None
    cpus = sorted(os.sched_getaffinity(0))
    assert server_options(parse("serve", "--model-base-path", "x", "--cpus", f"{cpus[0]}")).cpus == (cpus[0],)
    for bad in (["--version-label", "stable"], ["--batching-parameters-file", "f.txt"], ["--cpus", "0-1"],
                ["--cpus", "-1"], ["--cpus", str(cpus[-1] + 1)], ["--port", "70000"], ["--num-versions", "-1"],
                ["--enable-batching", "--batching-parameters-file", "no-such-file.txt"]):
        with pytest.raises(ConfigError) as err:  # a UserError: `vae` answers it with exit code 2
            server_options(parse("serve", "--model-base-path", "x", *bad))
        assert isinstance(err.value, UserError) and str(err.value)


@pytest.mark.slow
def test_serve_subprocess_answers_then_stops_on_sigterm(export_dir, tmp_path):
    port = free_port()
    command = [
        *VAE, "serve", "--model-base-path", str(export_dir.parent),
        "--port", str(port), "--enable-batching", "--cpus", str(min(os.sched_getaffinity(0))),
    ]
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        with VAEClient(f"127.0.0.1:{port}") as client:
            assert client.wait_until_ready(timeout=60) == 1
            assert client.generate(4, seed=1).shape == (4, *IMAGE_SHAPE)
        threads = [int(t) for t in os.listdir(f"/proc/{process.pid}/task")]
        assert len(threads) > 3  # gRPC's and TensorFlow's threads, each confined:
        assert {cpu for t in threads for cpu in os.sched_getaffinity(t)} == {min(os.sched_getaffinity(0))}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "received SIGTERM" in text and "server stopped" in text and "confined to CPUs" in text
