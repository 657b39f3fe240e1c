"""Every model of a models.config behind one look-up, like TF Serving's ServerCore.

Each model has its own `ModelManager` (serving/manager.py: version polling, loading and
its version policy). The registry answers `lookup(model_spec)` and `status(model_spec)` as
a single manager does, so the gRPC and REST doors (serving/service.py) serve every model
unchanged: it routes by model name, resolves version labels, and answers an unknown name
with TF Serving's NOT_FOUND.

With `config_poll_seconds` > 0 it re-reads the file (TF Serving's
`--model_config_file_poll_wait_seconds`) and applies a changed config as
`ServerCore::ReloadConfig` does: labels are checked first against the versions available
now, then new models are loaded, kept models get their new policy (a newly aspired version
loads before the one it replaces unloads), and the look-ups switch to the new models and
labels at once; removed models are unloaded last. Requests already running keep the
version they hold. A file that cannot be read or applied is logged and the running config
stays, as in TF Serving.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping

import grpc
from tensorflow_serving.apis import model_pb2

from core.config import ConfigError
from serving.errors import RequestError, invalid
from serving.layout import list_versions
from serving.manager import ModelManager, State, VersionState
from serving.model_config import (
    SPECIFIC,
    ModelEntry,
    ModelServerConfig,
    load_model_config,
)
from serving.poller import Poller
from serving.servable import Servable

log = logging.getLogger(__name__)
_LABEL_FLAG = "--allow-version-labels-for-unavailable-models"


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """What look-ups read: replaced whole by a reload, never changed (lock-free reads)."""

    config: ModelServerConfig | None = None
    managers: Mapping[str, ModelManager] = dataclasses.field(default_factory=dict)
    labels: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    retired: Mapping[str, Mapping[int, VersionState]] = dataclasses.field(default_factory=dict)


class ModelRegistry:
    """The models of a models.config file, with TF Serving's look-ups and config reloads.

    Args:
        config_file: the ModelServerConfig text proto (serving/model_config.py).
        poll_seconds: how often each model's folder is polled for versions (0: once).
        config_poll_seconds: how often the file is read again (0: read once).
        allow_version_labels_for_unavailable_models: a new label may name a version that is
            not loaded yet (TF Serving's flag of that name); without it every label must name
            an AVAILABLE version, so labels cannot be given at start-up.
        on_change: called with True when every listed model has a version available, and
            with False when that stops being so.
    """

    def __init__(
        self,
        config_file: str,
        poll_seconds: float = 1.0,
        config_poll_seconds: float = 0.0,
        allow_version_labels_for_unavailable_models: bool = False,
        on_change: Callable[[bool], None] | None = None,
    ):
        self.config_file = config_file
        self.poll_seconds = poll_seconds
        self.config_poll_seconds = config_poll_seconds
        self.allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._on_change = on_change
        self._snapshot = _Snapshot()
        self._reload_lock = threading.Lock()
        self._health_lock = threading.Lock()
        self._healthy = False
        self._last_error = ""
        self._poller = Poller(self.reload, config_poll_seconds, "model-config-poller", log, f"reloading {config_file} failed")

    # === Life cycle ===
    def start(self) -> None:
        """Reads the file, loads every model, then polls the file if asked to.

        Raises:
            ConfigError: the file is unreadable or malformed, names no model, names a
                base path that is not a folder, or labels a version (see the class doc).
        """
        config = startup_config(self.config_file, self.allow_unavailable_labels)
        with self._reload_lock:
            self._apply(config)
        self._poller.start()

    def stop(self) -> None:
        """Stops the config poller and every model's version poller (loaded versions stay
        until the registry is dropped, so requests in flight finish)."""
        self._poller.stop()
        for manager in self._snapshot.managers.values():
            manager.stop()

    def reload(self) -> bool:
        """Reads the file again and applies it if it changed (ServerCore::ReloadConfig).

        Returns:
            True if a changed config was applied; False if it was the same, empty, or
            refused (the reason is logged and the running config stays).
        """
        with self._reload_lock:
            if self._poller.stopped:
                return False
            try:
                config = load_model_config(self.config_file)
                if not config.is_set:
                    self._refused(f"{self.config_file} is empty: taking no action (as TF Serving)", logging.INFO)
                    return False
                if config == self._snapshot.config:
                    return False
                config.check_base_paths()
                _check_labels(config, self._snapshot, self.allow_unavailable_labels, start=False)
            except ConfigError as err:
                self._refused(str(err))
                return False
            self._apply(config)
            self._last_error = ""
            return True

    def apply_request(self, config: ModelServerConfig) -> None:
        """Applies a config a client sent (`ModelService/HandleReloadConfigRequest`).

        As in TF Serving, a config with nothing set changes nothing, and the next poll of
        the config file (when polling is on) applies the file again.

        Raises:
            ConfigError: a base path is not a folder or a label names a version that is not
                available; the running config stays.
        """
        with self._reload_lock:
            if self._poller.stopped:
                raise ConfigError("the server is stopping")
            if not config.is_set:
                log.info("%s sets no config: taking no action (as TF Serving)", config.path)
                return
            config.check_base_paths()
            _check_labels(config, self._snapshot, self.allow_unavailable_labels, start=False)
            self._apply(config)

    def _refused(self, message: str, level: int = logging.ERROR) -> None:
        """Logs why a reload was refused: once per reason, not at every poll."""
        if message != self._last_error:
            log.log(level, "model config not reloaded, the running one stays: %s", message)
        self._last_error = message

    # === Applying a config ===
    def _new_manager(self, model: ModelEntry) -> ModelManager:
        manager = ModelManager(model.name, model.base_path, poll_seconds=self.poll_seconds,
                               on_change=self._update_health)
        self._set_policy(manager, model)
        manager.start()
        return manager

    @staticmethod
    def _set_policy(manager: ModelManager, model: ModelEntry) -> None:
        if model.policy.kind == SPECIFIC:
            missing = sorted(set(model.policy.versions).difference(list_versions(model.base_path)))
            if missing:  # TF Serving warns the same way and serves the versions it finds
                log.warning("versions %s of model %s, requested by its specific policy, are not under %s",
                            missing, model.name, model.base_path)
        manager.set_version_policy(**model.policy.manager_args())

    def _apply(self, config: ModelServerConfig) -> None:
        """Loads new models, re-applies kept models' policies, switches, unloads removed models."""
        old = self._snapshot
        managers: dict[str, ModelManager] = {}
        try:
            for model in config.models:
                before = old.config.model(model.name) if old.config else None
                manager = old.managers.get(model.name)
                if manager is None or before is None or before.base_path != model.base_path:
                    log.info("adding model %s from %s (%s)", model.name, model.base_path, model.policy.describe())
                    manager = self._new_manager(model)
                elif before.policy != model.policy:
                    log.info("model %s: version policy %s -> %s", model.name, before.policy.describe(),
                             model.policy.describe())
                    self._set_policy(manager, model)
                managers[model.name] = manager
        except BaseException:  # the models loaded for this config go; the running ones stay
            for name, manager in managers.items():
                if old.managers.get(name) is not manager:
                    manager.stop()
            raise
        retired = {name: states for name, states in old.retired.items() if name not in managers}
        for name, manager in old.managers.items():
            if name not in managers:
                retired[name] = {v: VersionState(State.END) for v in _states(manager)}
        self._snapshot = _Snapshot(
            config, managers, {m.name: dict(m.version_labels) for m in config.models}, retired
        )
        for name, manager in old.managers.items():
            if managers.get(name) is not manager:
                manager.stop()  # its versions are freed once the requests holding them finish
                log.info("unloaded model %s%s", name, "" if name in managers else " (no longer in the config)")
        self._update_health()
        log.info("serving %s from %s", {n: m.available_versions for n, m in managers.items()}, config.path)

    def _update_health(self, _available: bool | None = None) -> None:
        """Tells `on_change` when "every model has a version available" flips."""
        managers = self._snapshot.managers
        healthy = bool(managers) and all(m.available_versions for m in managers.values())
        with self._health_lock:
            if healthy == self._healthy:
                return
            self._healthy = healthy
            if self._on_change is not None:
                self._on_change(healthy)

    # === Look-ups (what serving/service.py calls) ===
    @property
    def available_versions(self) -> dict[str, list[int]]:
        """The loaded versions of every model, by name."""
        return {name: m.available_versions for name, m in self._snapshot.managers.items()}

    def lookup(self, spec: model_pb2.ModelSpec) -> Servable:
        """The servable a ModelSpec asks for (latest, a version or a label).

        Raises:
            RequestError: INVALID_ARGUMENT without a name or with an unknown label;
                NOT_FOUND for a model not in the config or a version not loaded.
        """
        snapshot = self._snapshot
        if not spec.name:
            raise invalid("ModelSpec has no name specified.")
        if spec.WhichOneof("version_choice") == "version_label":
            labels = snapshot.labels.get(spec.name, {})
            if spec.version_label not in labels:
                raise invalid(f"Unrecognized servable version label: {spec.version_label}")
            resolved = model_pb2.ModelSpec(name=spec.name, signature_name=spec.signature_name)
            resolved.version.value = labels[spec.version_label]
            spec = resolved
        manager = snapshot.managers.get(spec.name)
        if manager is None:
            request = (f"Specific({spec.name}, {spec.version.value})" if spec.HasField("version")
                       else f"Latest({spec.name})")
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
        return manager.lookup(spec)

    def status(self, spec: model_pb2.ModelSpec) -> dict[int, VersionState]:
        """The state of one version or of every version of a model; a model removed from the
        config reports its versions END (TF Serving's state monitor keeps them).

        Raises:
            RequestError: NOT_FOUND for a model never served or an unknown version.
        """
        snapshot = self._snapshot
        manager = snapshot.managers.get(spec.name)
        if manager is not None:
            return manager.status(spec)
        states = dict(snapshot.retired.get(spec.name, {}))
        if spec.HasField("version"):
            version = spec.version.value
            if version not in states:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {spec.name}")
            return {version: states[version]}
        if not states:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        return dict(sorted(states.items()))


def _check_labels(config: ModelServerConfig, snapshot: _Snapshot, allow_unavailable: bool, start: bool) -> None:
    """UpdateModelVersionLabelMap (server_core.cc): run before the new config loads anything.

    Raises:
        ConfigError: a label names a version that is not AVAILABLE now, unless
            `allow_unavailable` and the label is new or keeps its version.
    """
    for model in config.models:
        manager = snapshot.managers.get(model.name)
        for label, version in model.version_labels:
            if allow_unavailable and snapshot.labels.get(model.name, {}).get(label, version) == version:
                continue
            if manager is not None and version in manager.available_versions:
                continue
            hint = ("at start-up no version is loaded yet, so TF Serving refuses every label: start with "
                    f"{_LABEL_FLAG}, or add the label to the file once the version is AVAILABLE"
                    if start else "add the label once that version is AVAILABLE (or start with "
                    f"{_LABEL_FLAG} for a new label)")
            raise ConfigError(
                f"{config.path}: model {model.name!r} version_labels {{ key: {label!r} value: {version} }}: "
                f"version {version} of model {model.name} is not currently available for inference; {hint}"
            )


def startup_config(path: str, allow_version_labels_for_unavailable_models: bool = False) -> ModelServerConfig:
    """The config a server starts from, checked as TF Serving checks its first config.

    Raises:
        ConfigError: the file is unreadable or malformed, names no model, names a base
            path that is not a folder, or has a label without the flag that allows it.
    """
    config = load_model_config(path)
    if not config.models:
        raise ConfigError(f"{config.path}: names no model; list them in model_config_list {{ config {{ ... }} }}")
    config.check_base_paths()
    _check_labels(config, _Snapshot(), allow_version_labels_for_unavailable_models, start=True)
    return config


def _states(manager: ModelManager) -> list[int]:
    """The versions a manager knows of (any state)."""
    try:
        return list(manager.status(model_pb2.ModelSpec(name=manager.name)))
    except RequestError:  # no version ever seen
        return []
