"""Finds, loads and unloads the versions of one model, like TF Serving's file-system source.

The manager polls `<model_base_path>` for integer folders, keeps the newest `num_versions`
loaded (0 keeps all), loads a new version (and replays its warm-up records) before it
unloads an old one, and answers version look-ups with TF Serving's codes and messages.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import grpc
from tensorflow_serving.apis import get_model_status_pb2, model_pb2

from serving.errors import RequestError, invalid
from serving.layout import list_versions
from serving.poller import Poller
from serving.servable import Servable

log = logging.getLogger(__name__)
State = get_model_status_pb2.ModelVersionStatus.State


@dataclasses.dataclass(frozen=True)
class VersionState:
    """Where a version is in its life: START, LOADING, AVAILABLE, END (with the error if any)."""

    state: int
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


class ModelManager:
    """Keeps the aspired versions of one model loaded.

    Args:
        name: the model name requests must use.
        base_path: the folder holding the version folders.
        num_versions: how many of the newest versions stay loaded (0: all).
            `set_version_policy` changes it, or pins given versions (TF Serving's
            `model_version_policy`: latest, all, specific).
        poll_seconds: how often to look for new versions (0: only at start).
        version_labels: label -> version (TF Serving's `version_labels`).
        max_load_attempts: a version that failed to load this often is given up (END).
        on_change: called with True/False when the model becomes (un)available.
    """

    def __init__(
        self,
        name: str,
        base_path: str | Path,
        num_versions: int = 2,
        poll_seconds: float = 1.0,
        version_labels: Mapping[str, int] | None = None,
        max_load_attempts: int = 3,
        on_change: Callable[[bool], None] | None = None,
    ):
        self.name = name
        self.base_path = Path(base_path)
        self.num_versions = num_versions
        self.poll_seconds = poll_seconds
        self.version_labels = dict(version_labels or {})
        self.max_load_attempts = max_load_attempts
        self._on_change = on_change
        self._servables: dict[int, Servable] = {}  # replaced, never mutated: lock-free reads
        self._states: dict[int, VersionState] = {}
        self._failures: dict[int, int] = {}
        self.specific_versions: frozenset[int] | None = None  # set_version_policy
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()  # one look at the file system at a time
        self._poller = Poller(self.poll_once, poll_seconds, "version-poller", log, f"polling {self.base_path} failed")
        self._warned_empty = False

    # === Life cycle ===
    def start(self) -> None:
        """Loads the current versions, then polls in a background thread."""
        self.poll_once()
        self._poller.start()

    def stop(self) -> None:
        self._poller.stop()

    def set_version_policy(self, num_versions: int = 0, versions: Iterable[int] | None = None) -> None:
        """Changes which versions are served and applies it now: the newest `num_versions`
        (0: all), or exactly `versions` that exist on disk. A newly aspired version loads
        before the versions it replaces unload, so requests keep being answered.
        """
        with self._poll_lock:
            self.num_versions = num_versions
            self.specific_versions = None if versions is None else frozenset(versions)
        self.poll_once()

    def _aspired(self, on_disk: list[int]) -> list[int]:
        if self.specific_versions is not None:
            return [v for v in on_disk if v in self.specific_versions]
        return on_disk[-self.num_versions :] if self.num_versions > 0 else on_disk

    def poll_once(self) -> None:
        """One look at the file system: load new aspired versions, unload old ones."""
        with self._poll_lock:  # the poller and set_version_policy may both look
            self._poll()

    def _poll(self) -> None:
        on_disk = self._versions_on_disk()
        aspired = self._aspired(on_disk)
        for version in reversed(aspired):  # newest first
            if version not in self._servables and self._failures.get(version, 0) < self.max_load_attempts:
                if self._poller.stopped:
                    return
                self._load(version)
        if any(v in self._servables for v in aspired):
            for version in [v for v in self._servables if v not in aspired]:
                self._unload(version)

    def _versions_on_disk(self) -> list[int]:
        versions = list_versions(self.base_path)
        if not versions and not self._warned_empty:
            self._warned_empty = True
            hint = self.base_path / self.name
            log.warning(
                "no version folders under %s%s", self.base_path,
                f"; did you mean {hint}?" if hint.is_dir() else "",
            )
        return versions

    def _set_state(self, version: int, state: VersionState) -> None:
        with self._lock:
            self._states = {**self._states, version: state}

    def _load(self, version: int) -> None:
        self._set_state(version, VersionState(State.LOADING))
        log.info("loading %s version %d", self.name, version)
        try:
            servable = Servable(self.name, version, self.base_path / str(version))
            replayed = servable.warm_up()
        except Exception as err:  # any failure keeps the versions already serving
            attempts = self._failures.get(version, 0) + 1
            self._failures[version] = attempts
            final = attempts >= self.max_load_attempts
            log.error("loading %s version %d failed (attempt %d): %s", self.name, version, attempts, err)
            self._set_state(
                version,
                VersionState(State.END if final else State.START, grpc.StatusCode.UNKNOWN, str(err)),
            )
            return
        was_available = bool(self._servables)
        with self._lock:
            self._servables = {**self._servables, version: servable}
            self._states = {**self._states, version: VersionState(State.AVAILABLE)}
        log.info("%s version %d available (%d warm-up requests)", self.name, version, replayed)
        if not was_available and self._on_change is not None:
            self._on_change(True)

    def _unload(self, version: int) -> None:
        self._set_state(version, VersionState(State.UNLOADING))
        with self._lock:
            self._servables = {v: s for v, s in self._servables.items() if v != version}
            self._states = {**self._states, version: VersionState(State.END)}
        log.info("unloaded %s version %d", self.name, version)
        if not self._servables and self._on_change is not None:
            self._on_change(False)

    # === Look-ups ===
    @property
    def available_versions(self) -> list[int]:
        return sorted(self._servables)

    def lookup(self, spec: model_pb2.ModelSpec) -> Servable:
        """The servable a ModelSpec asks for (latest, a version or a label).

        Raises:
            RequestError: INVALID_ARGUMENT without a name or with an unknown label,
                NOT_FOUND for another model or a version that is not loaded.
        """
        if not spec.name:
            raise invalid("ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        version: int | None = None
        if choice == "version":
            version = spec.version.value
        elif choice == "version_label":
            if spec.name == self.name and spec.version_label in self.version_labels:
                version = self.version_labels[spec.version_label]
            else:
                raise invalid(f"Unrecognized servable version label: {spec.version_label}")
        servables = self._servables
        if spec.name == self.name:
            if version is None and servables:
                return servables[max(servables)]
            if version in servables:
                return servables[version]
        request = f"Latest({spec.name})" if version is None else f"Specific({spec.name}, {version})"
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")

    def status(self, spec: model_pb2.ModelSpec) -> dict[int, VersionState]:
        """The state of one version (if the spec names one) or of every known version.

        Raises:
            RequestError: NOT_FOUND for an unknown model or version.
        """
        states = self._states if spec.name == self.name else {}
        if spec.HasField("version"):
            version = spec.version.value
            if version not in states:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {spec.name}"
                )
            return {version: states[version]}
        if not states:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        return dict(sorted(states.items()))

