"""TLS: a server with a certificate answers TLS clients that trust it, and only them."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
from serving_testlib import IMAGE_SHAPE, start_server

from serving import health
from serving.client import ServingError, TLSOptions, VAEClient

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "server.key", folder / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return key, cert


def test_tls_server_answers_trusting_clients_only(export_dir, certificate):
    key, cert = certificate
    server = start_server(export_dir.parent, poll_seconds=0, tls_cert_file=str(cert), tls_key_file=str(key))
    target = f"localhost:{server.port}"
    try:
        with VAEClient(target, tls=TLSOptions.from_files(cert)) as client:
            assert client.generate(3, seed=1).shape == (3, *IMAGE_SHAPE)
        credentials = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(target, credentials) as channel:
            assert health.check(channel) == "SERVING"
        with VAEClient(target, timeout=2, max_retries=0) as plaintext:
            with pytest.raises(ServingError) as err:
                plaintext.generate(1, seed=1)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(grace=1)
