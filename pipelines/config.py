"""Run configuration: data, training and model sections, saved as JSON next to every run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.config import ConfigBase, load_config, require, require_choice, save_config
from model.config import ModelConfig
from serving import contract as C

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
        labelled_per_class: for `model.kind=m2`: keep the labels of this many training
            images per class (drawn by `train.seed`, balanced, recorded in the workdir's
            `labelled.json`); every other training image gets the label -1 (unlabelled).
            None keeps every label.
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
    labelled_per_class: int | None = None

    def __post_init__(self) -> None:
        require(self, "dataset", bool(self.dataset), "must name a tfds dataset")
        require(self, "shuffle_buffer", self.shuffle_buffer >= 1, "must be >= 1")
        require(self, "in_memory_max_mb", self.in_memory_max_mb >= 0, "must be >= 0")
        require(self, "image_size", self.image_size is None or all(d > 0 for d in self.image_size),
                "must be two positive integers")
        require(self, "labelled_per_class", self.labelled_per_class is None or self.labelled_per_class >= 1,
                "must be >= 1 or null")


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
    model_name: str = C.MODEL_NAME
    strategy: str = "auto"
    cpu_replicas: int = 0
    mixed_precision: bool = False
    jit: bool = False
    checkpoint_every_steps: int = 0
    early_stopping_patience: int = 0
    tensorboard: bool = True
    max_train_seconds: float = 0.0

    def __post_init__(self) -> None:
        require_choice(self, "strategy", STRATEGIES)
        for field in ("cpu_replicas", "checkpoint_every_steps", "early_stopping_patience",
                      "max_train_seconds"):
            require(self, field, getattr(self, field) >= 0, "must be >= 0")
        require(self, "epochs", self.epochs >= 1, "must be >= 1")
        require(self, "batch_size", self.batch_size >= 1, "must be >= 1")
        require(self, "learning_rate", self.learning_rate > 0, "must be > 0")
        require(self, "steps_per_epoch", self.steps_per_epoch is None or self.steps_per_epoch >= 1,
                "must be >= 1 or null")
        require(self, "iwae_k", self.iwae_k >= 1, "must be >= 1")
        require(self, "eval_examples", self.eval_examples is None or self.eval_examples >= 1,
                "must be >= 1 or null")
        require(self, "eval_batch_size", self.eval_batch_size >= 1, "must be >= 1")
        require(self, "model_name", self.model_name.replace("_", "").replace("-", "").isalnum(),
                "must be letters, digits, '_' or '-'")


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

    def check_sections(self) -> "RunConfig":
        """Checks what depends on several sections (once every override is applied, as
        `resolve_config` and the training pipeline do); returns the config."""
        require(self.data, "labelled_per_class",
                self.data.labelled_per_class is None or self.model.kind == "m2",
                f"is only used by model.kind='m2' (model.kind is {self.model.kind!r})")
        return self

    def save(self, path: str | Path) -> None:
        save_config(self, path)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return load_config(cls, path)


def resolve_config(config_file: str | None, overrides: list[str]) -> RunConfig:
    """The defaults, then a config file, then `section.field=value` overrides in order."""
    config = RunConfig.load(config_file) if config_file else RunConfig()
    for assignment in overrides:
        config = config.override(assignment)
    return config.check_sections()
