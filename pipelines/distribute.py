"""tf.distribute set-up: choosing a strategy, CPU replicas, and who is the chief.

`auto` picks `multiworker` when TF_CONFIG names a cluster, `mirrored` when more than one
GPU is visible (or CPU replicas were asked for), and the default strategy otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import tensorflow as tf

log = logging.getLogger(__name__)

from core.errors import UserError
from pipelines.config import STRATEGIES


class DistributionError(UserError):
    """The requested strategy cannot run here; the message says why."""


@dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster."""

    strategy: tf.distribute.Strategy
    name: str
    task_type: str | None = None
    task_id: int = 0

    @property
    def is_chief(self) -> bool:
        """The chief writes checkpoints, logs, metrics, the model and exports."""
        return self.task_type in (None, "chief") or (
            self.task_type == "worker" and self.task_id == 0 and not self._has_chief
        )

    @property
    def _has_chief(self) -> bool:
        return "chief" in tf_config().get("cluster", {})

    @property
    def workers(self) -> int:
        """The processes that train together (1 unless multi-worker)."""
        if self.task_type is None:
            return 1
        spec = tf_config().get("cluster", {})
        return len(spec.get("chief", [])) + len(spec.get("worker", []))

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


def tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise DistributionError(f"TF_CONFIG is not valid JSON ({err}): {raw[:200]!r}") from None


def split_cpu(replicas: int) -> None:
    """Splits the CPU into `replicas` logical devices (before TensorFlow starts)."""
    if replicas <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    except RuntimeError as err:
        raise DistributionError(
            f"cannot split the CPU into {replicas} devices once TensorFlow has started: {err}"
        ) from None


def make_cluster(name: str = "auto", cpu_replicas: int = 0) -> Cluster:
    """Builds the strategy `name` (see `STRATEGIES`) and returns this process's place.

    Raises:
        DistributionError: unknown name, or `multiworker` without a TF_CONFIG cluster.
    """
    if name not in STRATEGIES:
        raise DistributionError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
    config = tf_config()
    task = config.get("task", {})
    has_cluster = bool(config.get("cluster"))
    if name == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        if has_cluster:
            name = "multiworker"
        elif len(gpus) > 1 or cpu_replicas > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multiworker":
        if not has_cluster:
            raise DistributionError(
                "strategy 'multiworker' needs TF_CONFIG naming the cluster and this task, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}'
            )
        split_cpu(cpu_replicas)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        cluster = Cluster(strategy, name, task.get("type"), int(task.get("index", 0)))
    elif name == "mirrored":
        split_cpu(cpu_replicas)
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        cluster = Cluster(strategy, name)
    else:
        cluster = Cluster(tf.distribute.get_strategy(), "default")
    log.info("strategy %s with %d replica(s)%s", cluster.name, cluster.replicas,
             f", task {cluster.task_type}:{cluster.task_id}" if cluster.task_type else "")
    return cluster
