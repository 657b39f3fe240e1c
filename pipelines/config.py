"""Run configuration: data, training and model sections, saved as JSON next to every run."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from core.config import ConfigBase, ConfigError, load_config, require, require_choice, save_config
from model import kinds
from model.config import ModelConfig
from pipelines.sources.spec import DATA_FIELDS as SOURCE_FIELDS, SourceSpec
from serving import contract as C

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
# How the learning rate falls over a run (`TrainConfig.lr_schedule`).
LR_SCHEDULES = ("constant", "linear", "cosine")
# A tfds dataset's validation images: the last 10% of its training split, held out of
# training, so that model selection (early stopping, `vae tune`) never sees the test split.
HELD_OUT_TRAIN, HELD_OUT_VALIDATION = "train[:90%]", "train[90%:]"


class DataSource(SourceSpec):
    """A run's `SourceSpec`, whose messages name the `data` fields (`DataConfig.dataset`)."""

    FIELD_LABELS = {spec: f"DataConfig.{flat}" for flat, spec in SOURCE_FIELDS.items()}
    ERROR = ConfigError


DEFAULT_SOURCE = DataSource(kind="tfds", dataset="fashion_mnist")


@dataclasses.dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Where the images come from and how they are fed.

    The input is one `SourceSpec` (`source`), read by the same source layer as `vae
    encode` reads its input with; config.json and the overrides spell its fields flat, as
    the `data` fields they were (`SOURCE_FIELDS`: `data.source` is its kind,
    `data.dataset=mnist`, `data.paths=[...]`).

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
        train_split, validation_split, test_split: tfds split expressions. By default
            the last 10% of the training split is held out for validation (what
            `train.early_stopping_patience` and `vae tune` select on), and the test split
            only scores the final model; a validation split that shares images with the
            test split is refused wherever it selects a model.
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

    source: SourceSpec = DEFAULT_SOURCE
    download: bool = False
    channels: int | None = None
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    class_names: tuple[str, ...] | None = None
    fingerprint: str | None = None
    binarize: bool | None = None
    train_split: str = HELD_OUT_TRAIN
    validation_split: str = HELD_OUT_VALIDATION
    test_split: str = "test"
    image_size: tuple[int, int] | None = None
    shuffle_buffer: int = 60_000
    cache: bool = True
    in_memory_max_mb: int = 1024
    labelled_per_class: int | None = None
    labelled_share: float | None = None

    def __post_init__(self) -> None:
        if type(self.source) is not DataSource:  # its messages name the data fields
            object.__setattr__(self, "source", DataSource(**self.source.fields()))
        require(self.source, "dataset", bool(self.source.dataset), "must name a tfds dataset")
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

    # === The source's fields, spelled flat (`SOURCE_FIELDS`) ===
    @classmethod
    def _field_names(cls) -> list[str]:
        return [*SOURCE_FIELDS, *(f.name for f in dataclasses.fields(cls) if f.name != "source")]

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        source = typing.get_type_hints(SourceSpec)
        flat = {flat: source[spec] for flat, spec in SOURCE_FIELDS.items()}
        return {**super()._hints(), **flat, "dataset": str}  # a run always names one (`tfds` or not)

    @classmethod
    def _from_values(cls, values: dict[str, Any]) -> DataConfig:
        source = {SOURCE_FIELDS[k]: values.pop(k) for k in list(values) if k in SOURCE_FIELDS}
        return cls(source=dataclasses.replace(DEFAULT_SOURCE, **source), **values)

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        source = values.pop("source")
        return {**{flat: source[spec] for flat, spec in SOURCE_FIELDS.items()}, **values}

    def _override_path(self, parts: list[str], value: Any, assignment: str) -> DataConfig:
        if parts[0] in SOURCE_FIELDS and len(parts) == 1:  # `data.dataset=mnist`
            return type(self).from_dict({**self.to_dict(), parts[0]: value})
        return super()._override_path(parts, value, assignment)

    # === Reading it ===
    @property
    def own(self) -> bool:
        """Whether the images are the user's own files (not a tfds dataset)."""
        return self.source.kind != "tfds"

    @property
    def name(self) -> str:
        """The data in a few words, for logs and metrics: the tfds name, or kind:path."""
        return self.source.dataset if not self.own else f"{self.source.kind}:{','.join(self.source.paths)}"

    def source_spec(self) -> SourceSpec:
        """The source as the source layer opens it (`pipelines.sources`), checked here, when
        a run opens it, not field by field (overrides set `source` and `paths` one at a
        time): `resize` is implied by `image_size` and `channels`.

        Raises:
            SourceConfigError: the source's paths or features do not fit its kind.
        """
        resize = self.source.resize or self.image_size is not None or self.channels is not None
        return SourceSpec(**{**self.source.fields(), "resize": resize}).check()


@dataclasses.dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """Optimisation and evaluation settings.

    Args:
        epochs: passes over the training split (or `steps_per_epoch` batches each).
        batch_size: the global batch size.
        learning_rate: Adam's learning rate.
        seed: seeds Python, NumPy, TensorFlow, the sampling noise and the data order.
        steps_per_epoch: batches per epoch on a repeated dataset; None = one pass.
        iwae_k: importance samples of the test log-likelihood estimate; None = the
            model's default, the largest of 1000, 500, 200, 100, ... whose work fits a fixed
            budget (1000 for the MLP VAE and CVAE, 100 for the convolutional VAE and the MLP
            M2, 10 for the convolutional M2; `pipelines.evaluate.resolve_iwae_k`).
        eval_examples: test images evaluated (None = the whole test split).
        eval_batch_size: images per evaluation batch at most (smaller when one batch's
            importance samples would not fit the evaluation's memory budget).
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
        iwae_start_fraction: with `model.density.train_samples` k > 1, train on the one-sample
            ELBO (k = 1) for this fraction of the run (of the time budget, or of the
            steps) and on the k-sample IWAE bound after it (0: IWAE from the start).
        weight_decay: a Gaussian prior on the weights, lambda: lambda / 2 x the sum of
            the squared trainable weights joins each example's objective, and its gradient
            goes through Adam with the data's (not decoupled); 1 / N, N the training
            examples, is the N(0, I) weight prior of Kingma et al. (2014). The logged
            `loss` leaves it out (0: off).
        m1_workdir: for a kind trained on a first stage (`model.kind=m1m2`): the workdir of
            a finished `vae train` run to use as that stage (its model settings and its
            data must match; `pipelines/train/stages.py`); None (the default): train it
            in the run's `m1/` folder, with the run's training settings.
    """

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    steps_per_epoch: int | None = None
    iwae_k: int | None = None
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
    weight_decay: float = 0.0
    m1_workdir: str | None = None

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
        require(self, "weight_decay", self.weight_decay >= 0, "must be >= 0")
        require(self, "steps_per_epoch", self.steps_per_epoch is None or self.steps_per_epoch >= 1,
                "must be >= 1 or null")
        require(self, "iwae_k", self.iwae_k is None or self.iwae_k >= 1, "must be >= 1 or null")
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
        if self.train.early_stopping_patience:
            self.check_validation_unseen("train.early_stopping_patience="
                                         f"{self.train.early_stopping_patience} selects the model on it")
        require(self.train, "m1_workdir", self.train.m1_workdir is None
                or kinds.lookup(self.model.kind).first_stage is not None,
                f"is only used by model.kind={kinds.names_where(lambda k: k.first_stage is not None)} "
                f"(model.kind is {self.model.kind!r})")
        semi_supervised = kinds.lookup(self.model.kind).semi_supervised
        only = (f"is only used by model.kind={kinds.names_where(lambda k: k.semi_supervised)} "
                f"(model.kind is {self.model.kind!r})")
        require(self.data, "labelled_per_class", self.data.labelled_per_class is None or semi_supervised, only)
        if self.data.labelled_share is not None:
            require(self.data, "labelled_share", semi_supervised, only)
            require(self.data, "labelled_share", self.data.labelled_per_class is not None,
                    "needs data.labelled_per_class (--labelled-per-class), the labelled subset it feeds")
            batch, labelled = self.train.batch_size, self.labelled_per_batch
            require(self.data, "labelled_share", 1 <= labelled < batch,
                    f"must leave labelled and unlabelled examples in every batch of "
                    f"train.batch_size={batch} (it gives {labelled} labelled)")
        return self

    def check_validation_unseen(self, why: str) -> None:
        """Refuses a tfds validation split that may share images with the test split.

        Args:
            why: what selects on the validation split, for the message.

        Raises:
            ConfigError: naming data.validation_split, data.test_split and `why`.
        """
        data = self.data
        if not data.own and splits_overlap(data.validation_split, data.test_split):
            raise ConfigError(
                f"data.validation_split={data.validation_split!r} shares images with "
                f"data.test_split={data.test_split!r}, and {why}: the test images would no longer "
                f"be unseen. Validate on a part of the training split (the default: "
                f"data.train_split={HELD_OUT_TRAIN!r} data.validation_split={HELD_OUT_VALIDATION!r})")

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


def _split_parts(expression: str) -> list[tuple[str, str]]:
    """(split name, slice text) of each `+` term of a tfds split expression."""
    parts = []
    for term in expression.replace(" ", "").split("+"):
        name, _, rest = term.partition("[")
        parts.append((name, rest.rstrip("]")))
    return parts


def _interval(piece: str) -> tuple[float, float, str] | None:
    """(start, end, unit) of a slice such as `:90%`, `90%:` or `100:200`; None when it is
    not a plain non-negative slice (a shard spec, a negative index)."""
    start, sep, end = piece.partition(":")
    units = {text[-1] for text in (start, end) if text and text[-1] == "%"}
    start, end = start.rstrip("%"), end.rstrip("%")
    if not sep or any(text and not text.isdigit() for text in (start, end)):
        return None
    unit = units.pop() if units else ""
    if unit == "" and "%" in piece:
        return None
    return float(start or 0), float(end) if end else float("inf"), unit


def splits_overlap(first: str, second: str) -> bool:
    """Whether two tfds split expressions may share examples: a term of each names the
    same split and their slices are not two provably disjoint ranges of the same unit."""
    for name, piece in _split_parts(first):
        for other_name, other_piece in _split_parts(second):
            if name != other_name:
                continue
            a, b = _interval(piece), _interval(other_piece)
            if not piece or not other_piece or a is None or b is None or a[2] != b[2]:
                return True
            if a[0] < b[1] and b[0] < a[1]:
                return True
    return False


def resolve_config(config_file: str | None, overrides: list[str]) -> RunConfig:
    """The defaults, then a config file, then `section.field=value` overrides in order."""
    config = RunConfig.load(config_file) if config_file else RunConfig()
    for assignment in overrides:
        config = config.override(assignment)
    return config.check_sections()
