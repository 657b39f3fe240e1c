"""Run configuration: data, training and model sections, saved as JSON next to every run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from core.config import ConfigBase, load_config, require, require_choice, save_config
from model.config import ModelConfig
from pipelines.sources.spec import KINDS as SOURCE_KINDS, SourceSpec
from serving import contract as C

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
# How the learning rate falls over a run (`TrainConfig.lr_schedule`).
LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Where the images come from and how they are fed.

    Args:
        source: `tfds` (a tensorflow-datasets dataset), or the user's own files:
            `images` (a folder of PNG/JPEG files; class subfolders give labels), `npy`
            (.npy arrays) or `tfrecord` (tf.train.Example records); `pipelines.sources`
            reads them, as `vae encode` does.
        dataset: a tensorflow-datasets name with an `image` feature (`source=tfds`).
        data_dir: tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
        download: allow tfds to download and prepare the dataset (network).
        paths: the folder (`images`), or files / glob patterns (`npy`, `tfrecord`).
        image_feature, label_feature: the TFRecord image feature and optional int64
            label feature.
        labels_file: a .npy of one integer label per input, in the source's order.
        resize: resize (bilinear) and convert the channels of own images of another
            shape instead of treating them as bad inputs; implied by `image_size` and
            `channels`.
        channels: the channels of own images (1 grey, 3 RGB, 4 RGBA); None keeps the
            first image's.
        skip_bad: skip own inputs that cannot be decoded or have the wrong shape and
            list them in the workdir's `source.json`, instead of stopping on the first.
        validation_fraction, test_fraction: own data has no splits: these fractions of
            its inputs are held out for validation and test, drawn by `split_seed`
            (recorded in the workdir's `source.json`; the test images are never trained
            or tuned on).
        split_seed: seeds the draw of the held-out splits.
        class_names, fingerprint: filled in from own data when a run starts (do not
            set): its class names (the export carries them) and the SHA-256 of its files'
            contents (a resume with changed files is refused).
        binarize: dynamic binarisation, a fresh Bernoulli draw each time an image is
            fed; None means "when the likelihood is Bernoulli".
        train_split, validation_split, test_split: tfds split expressions.
        image_size: (height, width) to resize to; None keeps the dataset's size (own
            data: the first image's).
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
        labelled_share: for `model.kind=m2` with `labelled_per_class`: every training
            batch holds exactly round(share * batch_size) labelled examples (the labelled
            subset repeated as often as needed, reshuffled each pass) and unlabelled ones
            for the rest, the rows mixed within the batch; in (0, 1). None draws batches
            from the whole split, labelled examples in their natural proportion.
    """

    source: str = "tfds"
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    download: bool = False
    paths: tuple[str, ...] = ()
    image_feature: str = "image"
    label_feature: str | None = "label"
    labels_file: str | None = None
    resize: bool = False
    channels: int | None = None
    skip_bad: bool = False
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    class_names: tuple[str, ...] | None = None
    fingerprint: str | None = None
    binarize: bool | None = None
    train_split: str = "train"
    validation_split: str = "test"
    test_split: str = "test"
    image_size: tuple[int, int] | None = None
    shuffle_buffer: int = 60_000
    cache: bool = True
    in_memory_max_mb: int = 1024
    labelled_per_class: int | None = None
    labelled_share: float | None = None

    def __post_init__(self) -> None:
        require_choice(self, "source", SOURCE_KINDS)
        require(self, "dataset", bool(self.dataset), "must name a tfds dataset")
        require(self, "channels", self.channels in (None, 1, 3, 4), "must be 1, 3, 4 or null")
        for field in ("validation_fraction", "test_fraction"):
            require(self, field, 0 < getattr(self, field) < 1, "must be in (0, 1)")
        require(self, "test_fraction", self.validation_fraction + self.test_fraction < 1,
                "plus data.validation_fraction must leave images to train on (< 1)")
        require(self, "shuffle_buffer", self.shuffle_buffer >= 1, "must be >= 1")
        require(self, "in_memory_max_mb", self.in_memory_max_mb >= 0, "must be >= 0")
        require(self, "image_size", self.image_size is None or all(d > 0 for d in self.image_size),
                "must be two positive integers")
        require(self, "labelled_per_class", self.labelled_per_class is None or self.labelled_per_class >= 1,
                "must be >= 1 or null")
        require(self, "labelled_share", self.labelled_share is None or 0 < self.labelled_share < 1,
                "must be in (0, 1) or null")

    @property
    def own(self) -> bool:
        """Whether the images are the user's own files (not a tfds dataset)."""
        return self.source != "tfds"

    @property
    def name(self) -> str:
        """The data in a few words, for logs and metrics: the tfds name, or kind:path."""
        return self.dataset if not self.own else f"{self.source}:{','.join(self.paths)}"

    def source_spec(self) -> SourceSpec:
        """Own data as the source layer names it (`pipelines.sources`); checked here, when a
        run opens it, not field by field (overrides set `source` and `paths` one at a time).

        Raises:
            SourceConfigError: the source's paths or features do not fit its kind.
        """
        return SourceSpec(kind=self.source, dataset=self.dataset, data_dir=self.data_dir,
                          paths=self.paths, image_feature=self.image_feature,
                          label_feature=self.label_feature, labels_file=self.labels_file,
                          resize=self.resize or self.image_size is not None or self.channels is not None,
                          skip_bad=self.skip_bad)


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
            training stops when it is used up, mid-epoch if need be. The seconds used
            are checkpointed, so a resumed run finishes the same budget. Refused with
            several workers (each keeps its own clock).
        lr_schedule: `constant`, or the learning rate decayed to zero over the run,
            `linear` or `cosine`: over the seconds of `max_train_seconds` when a budget
            is set (by the training seconds used so far, checkpointed, so a resumed run
            continues the decay), over `epochs` x steps per epoch otherwise.
        init_output_bias: set the decoder's output bias to the logit of the mean
            training image (Bernoulli; the mean itself for a Gaussian) before training.
        kl_warmup_fraction: ramp the KL weight linearly from 0 to `model.beta` over this
            fraction of the run (of the time budget, or of the steps), in place of
            `model.kl_warmup_steps` (0: off).
        iwae_start_fraction: with `model.train_samples` k > 1, train on the one-sample
            ELBO (k = 1) for this fraction of the run (of the time budget, or of the
            steps) and on the k-sample IWAE bound after it (0: IWAE from the start).
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
    lr_schedule: str = "linear"
    init_output_bias: bool = False
    kl_warmup_fraction: float = 0.8
    iwae_start_fraction: float = 0.0

    def __post_init__(self) -> None:
        require_choice(self, "strategy", STRATEGIES)
        require_choice(self, "lr_schedule", LR_SCHEDULES)
        require(self, "iwae_start_fraction", 0.0 <= self.iwae_start_fraction < 1.0,
                "must be in [0, 1)")
        require(self, "kl_warmup_fraction", 0.0 <= self.kl_warmup_fraction <= 1.0, "must be in [0, 1]")
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
        if self.data.labelled_share is not None:
            require(self.data, "labelled_share", self.model.kind == "m2",
                    f"is only used by model.kind='m2' (model.kind is {self.model.kind!r})")
            require(self.data, "labelled_share", self.data.labelled_per_class is not None,
                    "needs data.labelled_per_class (--labelled-per-class), the labelled subset it feeds")
            batch, labelled = self.train.batch_size, self.labelled_per_batch
            require(self.data, "labelled_share", 1 <= labelled < batch,
                    f"must leave labelled and unlabelled examples in every batch of "
                    f"train.batch_size={batch} (it gives {labelled} labelled)")
        return self

    @property
    def labelled_per_batch(self) -> int | None:
        """The labelled examples of every training batch: round(`data.labelled_share` x
        `train.batch_size`); None without a share (the natural proportion)."""
        share = self.data.labelled_share
        return None if share is None else round(share * self.train.batch_size)

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
