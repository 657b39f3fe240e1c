"""docker-compose.yml: valid against the compose spec, consistent with the exporter's layout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import contract as C
from serving.batching import BatchingOptions

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def service():
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(COMPOSE.read_text())["services"]["tfserving"]


def flags(service) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in service["command"])


def mounts(service) -> dict[str, str]:
    """Container path -> host path (relative to the compose file)."""
    return {target: source for source, target, *_ in (v.split(":") for v in service["volumes"])}


def test_compose_file_validates_against_the_compose_spec():
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or "check-jsonschema"
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_the_official_one_pinned_to_our_tensorflow(service):
    image, tag = service["image"].split(":")
    assert image == "tensorflow/serving"
    api = metadata.version("tensorflow-serving-api")  # 2.21.x, paired with tensorflow 2.21
    assert tag.split(".")[:2] == api.split(".")[:2]
    assert service["entrypoint"] == ["/usr/bin/tensorflow_model_server"]


def test_ports_and_flags(service):
    assert f"{C.GRPC_PORT}:{C.GRPC_PORT}" in service["ports"] and f"{C.REST_PORT}:{C.REST_PORT}" in service["ports"]
    options = flags(service)
    assert (options["port"], options["rest_api_port"]) == (str(C.GRPC_PORT), str(C.REST_PORT))
    # TF Serving batches every signature; generate's scalar inputs would fail under it.
    assert "enable_batching" not in options and "batching_parameters_file" not in options


def test_config_files_are_mounted_from_serving(service):
    options, volumes = flags(service), mounts(service)
    for flag in ("model_config_file", "monitoring_config_file"):
        host = volumes[options[flag]]
        assert (ROOT / host).is_file() and Path(host).parent.name == "serving"


def test_models_config_matches_the_export_layout(service):
    host = ROOT / mounts(service)[flags(service)["model_config_file"]]
    config = text_format.Parse(host.read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    expected = (C.MODEL_NAME, C.CONTAINER_MODEL_BASE_PATH, "tensorflow")
    assert (model.name, model.base_path, model.model_platform) == expected
    # The export folder <base>/<model name> is what is mounted at the base path.
    assert Path(mounts(service)[model.base_path]).parts[-1] == C.MODEL_NAME
    # The local server's default policy is the same.
    from serving.server import ServerOptions

    assert model.model_version_policy.latest.num_versions == ServerOptions(model_base_path="x").num_versions


def test_monitoring_and_batching_configs_parse(service):
    text = (ROOT / mounts(service)[flags(service)["monitoring_config_file"]]).read_text()
    assert "prometheus_config" in text and "enable: true" in text
    BatchingOptions.from_file(ROOT / "serving" / "batching_parameters.txt")
