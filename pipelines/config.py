"""Run configuration: data, training and model sections, saved as JSON next to every run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from model.config import ConfigBase, ConfigError, ModelConfig, _require

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


@dataclasses.dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Where the images come from and how they are fed.

    Args:
        dataset: a tensorflow-datasets name with an `image` feature.
        data_dir: tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
        download: allow tfds to download and prepare the dataset (network).
        binarize: dynamic binarisation, a fresh Bernoulli draw each time an image is
            fed; None means "when the likelihood is Bernoulli".
        train_split, validation_split, test_split: tfds split expressions.
        image_size: (height, width) to resize to; None keeps the dataset's size.
        shuffle_buffer: shuffle buffer of the training split.
        cache: keep the decoded images in memory after the first epoch.
        in_memory_max_mb: a training split whose decoded images fit in this many MB is
            held in memory as one uint8 array and each global batch is gathered by index
            from a per-epoch permutation (far less work per image than a shuffle buffer);
            0 always streams. Multi-worker runs always stream (tf.data shards them).
    """

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    download: bool = False
    binarize: bool | None = None
    train_split: str = "train"
    validation_split: str = "test"
    test_split: str = "test"
    image_size: tuple[int, int] | None = None
    shuffle_buffer: int = 60_000
    cache: bool = True
    in_memory_max_mb: int = 1024

    def __post_init__(self) -> None:
        name = type(self).__name__
        _require(bool(self.dataset), f"{name}.dataset must name a tfds dataset")
        _require(
            self.shuffle_buffer >= 1, f"{name}.shuffle_buffer must be >= 1, got {self.shuffle_buffer}"
        )
        _require(
            self.in_memory_max_mb >= 0,
            f"{name}.in_memory_max_mb must be >= 0, got {self.in_memory_max_mb}",
        )
        _require(
            self.image_size is None or all(d > 0 for d in self.image_size),
            f"{name}.image_size must be two positive integers, got {self.image_size!r}",
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """Optimisation and evaluation settings.

    Args:
        epochs: passes over the training split (or `steps_per_epoch` batches each).
        batch_size: the global batch size.
        learning_rate: Adam's learning rate.
        seed: seeds Python, NumPy, TensorFlow, the sampling noise and the data order.
        steps_per_epoch: batches per epoch on a repeated dataset; None = one pass.
        iwae_k: importance samples of the test log-likelihood estimate.
        eval_examples: test images evaluated (None = the whole test split).
        eval_batch_size: images per evaluation batch.
        model_name: the name the model is exported and served under.
        strategy: `auto`, `default`, `mirrored` or `multiworker` (see pipelines.distribute).
        cpu_replicas: split the CPU into N logical devices (mirrored training without GPUs).
        mixed_precision: compute in float16 (GPU) or bfloat16 (CPU); losses stay float32.
        jit: compile the training step with XLA.
        checkpoint_every_steps: checkpoint every N optimizer steps too (0: every epoch).
        early_stopping_patience: stop after N epochs without a better validation
            negative ELBO and keep the best weights (0: off).
        tensorboard: write TensorBoard logs to `workdir/logs`.
        max_train_seconds: a wall-clock budget for the training steps (0: none);
            training stops when it is used up, mid-epoch if need be.
    """

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    steps_per_epoch: int | None = None
    iwae_k: int = 1000
    eval_examples: int | None = None
    eval_batch_size: int = 500
    model_name: str = "vae"
    strategy: str = "auto"
    cpu_replicas: int = 0
    mixed_precision: bool = False
    jit: bool = False
    checkpoint_every_steps: int = 0
    early_stopping_patience: int = 0
    tensorboard: bool = True
    max_train_seconds: float = 0.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _require(
            self.strategy in STRATEGIES,
            f"{name}.strategy must be one of {STRATEGIES}, got {self.strategy!r}",
        )
        for field_name in ("cpu_replicas", "checkpoint_every_steps", "early_stopping_patience",
                           "max_train_seconds"):
            value = getattr(self, field_name)
            _require(value >= 0, f"{name}.{field_name} must be >= 0, got {value}")
        _require(self.epochs >= 1, f"{name}.epochs must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 1, f"{name}.batch_size must be >= 1, got {self.batch_size}")
        _require(
            self.learning_rate > 0, f"{name}.learning_rate must be > 0, got {self.learning_rate}"
        )
        _require(
            self.steps_per_epoch is None or self.steps_per_epoch >= 1,
            f"{name}.steps_per_epoch must be >= 1 or null, got {self.steps_per_epoch}",
        )
        _require(self.iwae_k >= 1, f"{name}.iwae_k must be >= 1, got {self.iwae_k}")
        _require(
            self.eval_examples is None or self.eval_examples >= 1,
            f"{name}.eval_examples must be >= 1 or null, got {self.eval_examples}",
        )
        _require(
            self.eval_batch_size >= 1,
            f"{name}.eval_batch_size must be >= 1, got {self.eval_batch_size}",
        )
        _require(
            self.model_name.replace("_", "").replace("-", "").isalnum(),
            f"{name}.model_name must be letters, digits, '_' or '-', got {self.model_name!r}",
        )


@dataclasses.dataclass(frozen=True)
class RunConfig(ConfigBase):
    """Everything a training run needs: `model`, `data` and `train` sections."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    @property
    def binarize(self) -> bool:
        """Whether the images are dynamically binarised (auto: for a Bernoulli decoder)."""
        if self.data.binarize is None:
            return self.model.likelihood == "bernoulli"
        return self.data.binarize

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            return cls.from_json(path.read_text())
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None


def resolve_config(config_file: str | None, overrides: list[str]) -> RunConfig:
    """The defaults, then a config file, then `section.field=value` overrides in order."""
    config = RunConfig.load(config_file) if config_file else RunConfig()
    for assignment in overrides:
        config = config.override(assignment)
    return config
