"""TLS: a server with a certificate answers TLS clients that trust it, and only them; with a
client CA (mutual TLS) it answers only clients whose certificate that CA signed.

Certificates are made here with `cryptography` (an apache-beam dependency): a server CA,
a client CA and a stranger CA, each signing one certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_testlib import IMAGE_SHAPE, start_server

from serving.client import ServingError, TLSOptions, VAEClient

HOST = "localhost"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(HOST), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _authority(folder: Path, name: str) -> dict[str, Path]:
    """A CA and one leaf certificate it signed: {"ca", "key", "cert"} PEM files."""
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = {"ca": folder / f"{name}-ca.pem", "key": folder / f"{name}.key", "cert": folder / f"{name}.pem"}
    files["ca"].write_bytes(_certificate(f"{name} CA", ca_key, f"{name} CA", ca_key, ca=True))
    files["key"].write_bytes(_pem_key(key))
    files["cert"].write_bytes(_certificate(HOST, key, f"{name} CA", ca_key, ca=False))
    return files


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    return {name: _authority(folder, name) for name in ("server", "client", "stranger")}


@pytest.fixture(scope="module")
def tls_server(export_dir, pki):
    server = start_server(export_dir.parent, poll_seconds=0, tls_cert_file=str(pki["server"]["cert"]),
                          tls_key_file=str(pki["server"]["key"]))
    yield f"{HOST}:{server.port}"
    server.stop(grace=1)


@pytest.fixture(scope="module")
def mtls_server(export_dir, pki):
    server = start_server(export_dir.parent, poll_seconds=0, tls_cert_file=str(pki["server"]["cert"]),
                          tls_key_file=str(pki["server"]["key"]), tls_client_ca_file=str(pki["client"]["ca"]))
    yield f"{HOST}:{server.port}"
    server.stop(grace=1)


def refused(target: str, tls: TLSOptions | None) -> grpc.StatusCode:
    """The code of a call that must fail (no retries, short deadline)."""
    with VAEClient(target, timeout=5, tls=tls, max_retries=0) as client:
        with pytest.raises(ServingError) as err:
            client.generate(1, seed=1)
    return err.value.code


def test_tls_server_answers_trusting_clients_only(tls_server, pki):
    ca = pki["server"]["ca"]
    with VAEClient(tls_server, tls=TLSOptions.from_files(ca)) as client:
        assert client.generate(3, seed=1).shape == (3, *IMAGE_SHAPE)
    credentials = grpc.ssl_channel_credentials(ca.read_bytes())
    with grpc.secure_channel(tls_server, credentials) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert refused(tls_server, None) == grpc.StatusCode.UNAVAILABLE  # plaintext


def test_a_client_that_does_not_trust_the_server_certificate_fails(tls_server, pki):
    assert refused(tls_server, TLSOptions.from_files(pki["stranger"]["ca"])) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_answers_a_client_certificate_signed_by_the_client_ca(mtls_server, pki):
    tls = TLSOptions.from_files(pki["server"]["ca"], pki["client"]["key"], pki["client"]["cert"])
    with VAEClient(mtls_server, tls=tls) as client:
        assert client.generate(2, seed=4).shape == (2, *IMAGE_SHAPE)


def test_mutual_tls_refuses_clients_without_a_certificate_or_with_a_stranger_one(mtls_server, pki):
    assert refused(mtls_server, TLSOptions.from_files(pki["server"]["ca"])) == grpc.StatusCode.UNAVAILABLE
    stranger = TLSOptions.from_files(pki["server"]["ca"], pki["stranger"]["key"], pki["stranger"]["cert"])
    assert refused(mtls_server, stranger) == grpc.StatusCode.UNAVAILABLE
