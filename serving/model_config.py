"""TF Serving's model server config file (`--model_config_file`), read as TF Serving reads it.

The file is a `tensorflow.serving.ModelServerConfig` text proto (model_server_config.proto);
the same file serves `vae serve --model-config-file` and the TF Serving container of
docker-compose.yml:

    model_config_list {
      config {
        name: "vae"
        base_path: "/models/vae"                     # the folder of the version folders
        model_platform: "tensorflow"
        model_version_policy { latest { num_versions: 2 } }   # or all {} / specific { versions: 3 }
        version_labels { key: "stable" value: 3 }
      }
    }

It becomes frozen dataclasses (the project's config idiom); a bad file is a `ConfigError`
naming the file and the field. TF Serving's rules: names are unique; the platform is
`model_platform` or the deprecated `model_type`, not both, and must be "tensorflow"; no
policy means `latest` with one version, and `latest { num_versions: 0 }` means one too.
One difference: TF Serving refuses a relative `base_path` (it has no folder to resolve it
against); here it is resolved against the config file's folder, so a project can keep a
config with `base_path: "../exports/vae"` for local use. Parsing imports no TensorFlow;
checking a `gs://` base path does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from core.config import ConfigBase, ConfigError, require, require_choice
from core.files import is_remote

log = logging.getLogger(__name__)

TENSORFLOW_PLATFORM = "tensorflow"
LATEST, ALL, SPECIFIC = "latest", "all", "specific"


@dataclasses.dataclass(frozen=True)
class VersionPolicy(ConfigBase):
    """Which versions on disk are served (`model_version_policy`, a ServableVersionPolicy).

    Args:
        kind: "latest" (the newest `num_versions`), "all", or "specific" (`versions`).
        num_versions: for "latest", how many of the newest versions (>= 1).
        versions: for "specific", the version numbers to serve.
    """

    kind: str = LATEST
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        require_choice(self, "kind", (LATEST, ALL, SPECIFIC))
        require(self, "num_versions", self.num_versions >= 1, "must be >= 1")
        require(self, "versions", self.kind != SPECIFIC or bool(self.versions),
                "must list at least one version for the specific policy")

    def manager_args(self) -> dict:
        """The `ModelManager.set_version_policy` arguments that serve these versions."""
        if self.kind == SPECIFIC:
            return {"num_versions": 0, "versions": self.versions}
        return {"num_versions": self.num_versions if self.kind == LATEST else 0, "versions": None}

    def describe(self) -> str:
        if self.kind == LATEST:
            return f"latest {self.num_versions}"
        return "all" if self.kind == ALL else f"specific {list(self.versions)}"


@dataclasses.dataclass(frozen=True)
class ModelEntry(ConfigBase):
    """One `config { ... }` of the list.

    Args:
        name: the name requests use.
        base_path: the folder holding the version folders (absolute, or a URL).
        policy: which versions are served.
        version_labels: (label, version) pairs, sorted by label.
    """

    name: str
    base_path: str
    policy: VersionPolicy = VersionPolicy()
    version_labels: tuple[tuple[str, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelServerConfig(ConfigBase):
    """A parsed models.config.

    Args:
        path: the file it was read from.
        models: the models, in file order (empty for an empty list).
        is_set: False for a file with neither `model_config_list` nor anything else (TF
            Serving takes no action on such a file when it reloads).
    """

    path: str
    models: tuple[ModelEntry, ...] = ()
    is_set: bool = True

    def model(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)

    def check_base_paths(self) -> None:
        """Every model's base path is an existing folder.

        Raises:
            ConfigError: naming the file, the model and its `base_path`.
        """
        for index, model in enumerate(self.models):
            if not _is_dir(model.base_path):
                raise ConfigError(
                    f"{self.path}: model_config_list.config[{index}].base_path of model {model.name!r} is "
                    f"{model.base_path!r}, which is not a folder (it must hold the version folders, "
                    "e.g. exports/vae with exports/vae/1/saved_model.pb)"
                )


def _is_dir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    import tensorflow as tf

    return bool(tf.io.gfile.isdir(path))


def _resolve(base_path: str, folder: Path) -> str:
    """A relative base path against the config file's folder; absolute paths and URLs as they are."""
    if is_remote(base_path) or os.path.isabs(base_path):
        return base_path
    return os.path.normpath(os.path.join(folder, base_path))


def _policy(proto, where: str) -> VersionPolicy:
    choice = proto.WhichOneof("policy_choice")
    if choice in (None, LATEST):  # no policy: the latest version (file_system_storage_path_source.cc)
        return VersionPolicy(LATEST, max(proto.latest.num_versions, 1))
    if choice == ALL:
        return VersionPolicy(ALL)
    versions = tuple(sorted(set(proto.specific.versions)))
    if not versions:
        raise ConfigError(f"{where}.model_version_policy.specific lists no versions; add `versions: N`")
    return VersionPolicy(SPECIFIC, versions=versions)


def _platform(proto, where: str) -> str:
    """GetPlatform (server_core.cc), and the one platform this server serves."""
    from tensorflow_serving.config import model_server_config_pb2 as pb

    if proto.model_type != pb.MODEL_TYPE_UNSPECIFIED:
        if proto.model_platform:
            raise ConfigError(f"{where}: illegal setting both model_type (deprecated) and model_platform")
        if proto.model_type != pb.TENSORFLOW:
            raise ConfigError(f"{where}.model_type {pb.ModelType.Name(proto.model_type)} is not supported")
        log.warning("%s uses the deprecated model_type; prefer model_platform: %r", where, TENSORFLOW_PLATFORM)
        return TENSORFLOW_PLATFORM
    if not proto.model_platform:
        raise ConfigError(f"{where}: illegal setting neither model_type (deprecated) nor model_platform; "
                          f"add model_platform: {TENSORFLOW_PLATFORM!r}")
    if proto.model_platform != TENSORFLOW_PLATFORM:
        raise ConfigError(f"{where}.model_platform {proto.model_platform!r} is not supported; this server serves "
                          f"{TENSORFLOW_PLATFORM!r} SavedModels")
    return proto.model_platform


def parse_model_config(text: str, path: str | os.PathLike) -> ModelServerConfig:
    """Parses the text of a models.config as TF Serving does (no file-system checks).

    Args:
        text: the ModelServerConfig text proto.
        path: the file it came from: named in errors, and relative base paths resolve
            against its folder.

    Raises:
        ConfigError: not a ModelServerConfig text proto, a `custom_model_config`, or a
            model that breaks TF Serving's rules (the message names the file and field).
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2 as pb

    path = str(path)
    try:
        proto = text_format.Parse(text, pb.ModelServerConfig())
    except text_format.ParseError as err:
        raise ConfigError(f"{path}: not a ModelServerConfig text proto: {err}") from None
    return config_from_proto(proto, path, Path(path).absolute().parent)


def config_from_proto(proto, where: str, folder: Path) -> ModelServerConfig:
    """A ModelServerConfig message as this server's config, checked by TF Serving's rules.

    Args:
        proto: a `tensorflow_serving.config.ModelServerConfig` (from a file, or from a
            `ReloadConfigRequest`).
        where: named in errors (the file, or the request).
        folder: relative base paths resolve against it.

    Raises:
        ConfigError: a `custom_model_config`, or a model that breaks TF Serving's rules.
    """
    choice = proto.WhichOneof("config")
    if choice is None:
        return ModelServerConfig(where, (), is_set=False)
    if choice != "model_config_list":
        raise ConfigError(f"{where}: {choice} is not supported; list the models in model_config_list")
    models, seen = [], set()
    for index, config in enumerate(proto.model_config_list.config):
        at = f"{where}: model_config_list.config[{index}]"
        if not config.name:
            raise ConfigError(f"{at}.name must not be empty")
        at = f"{at} (model {config.name!r})"
        if config.name in seen:
            raise ConfigError(f"{at}: illegal to list model {config.name} multiple times in config list")
        seen.add(config.name)
        if not config.base_path:
            raise ConfigError(f"{at}.base_path must not be empty")
        _platform(config, at)
        if config.HasField("logging_config"):
            log.warning("%s.logging_config is ignored: this server does not log requests", at)
        models.append(ModelEntry(
            config.name,
            _resolve(config.base_path, folder),
            _policy(config.model_version_policy, at),
            tuple(sorted(config.version_labels.items())),
        ))
    return ModelServerConfig(where, tuple(models))


def load_model_config(path: str | os.PathLike) -> ModelServerConfig:
    """Reads and parses a models.config file (see `parse_model_config`).

    Raises:
        ConfigError: the file cannot be read, or see `parse_model_config`.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"model config file {str(path)!r} cannot be read: {reason}") from None
    return parse_model_config(text, path)
