"""Typed, frozen configuration of the VAE model: the networks and the objective."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from core.config import ConfigBase, ConfigError, require, require_choice
from model import kinds
from model.kinds import CONDITIONS, HALF_CONDITIONS

__all__ = ["ARCHITECTURES", "BLOCKS", "CONDITIONS", "HALF_CONDITIONS", "LIKELIHOODS", "PRIORS", "ConfigBase",
           "ConfigError", "DensityConfig", "M1M2Config", "M2Config", "ModelConfig"]

ARCHITECTURES = ("mlp", "conv")
# Hidden blocks of the MLP networks (model.networks.BLOCKS): plain, gated or residual dense.
BLOCKS = ("dense", "gated", "residual")
LIKELIHOODS = ("bernoulli", "gaussian")
# The prior over the (top) latent layer: N(0, I), or the VampPrior, a mixture of the
# encoder's posteriors at learned pseudo-inputs (model/priors.py); a kind declares which
# it supports (`model/kinds.py`).
PRIORS = ("gaussian", "vamp")


@dataclasses.dataclass(frozen=True)
class DensityConfig(ConfigBase):
    """The density-model options (`ModelConfig.density`): the training objective's k, the
    prior and the stochastic layers. Which of them a kind supports, its kind declares
    (`model/kinds.py`).

    Args:
        train_samples: k of the training objective: 1 is the ELBO, k > 1 the IWAE bound
            -log (1/k) sum_i p(x, z_i) / q(z_i|x) (kinds vae and cvae). The model reads
            it from the attribute `model.train_samples` when a step is traced, so a
            trainer may change k for the last part of a run.
        prior: `"gaussian"` (N(0, I)) or `"vamp"` (the VampPrior, kind vae only); None
            (the default): the kind's default, `ModelConfig.prior_name` (the VampPrior for
            kind vae, which measured 1.5 nats better than N(0, I) in the same 600 s of
            training, `benchmarks/quality.py`; N(0, I) for cvae and m2).
        pseudo_inputs: K, the VampPrior's number of learned pseudo-inputs (used only
            with the VampPrior; 100 pays for its cost here, where 500 starves the run of
            epochs).
        stochastic_layers: 1, or 2 for the two-layer HVAE q(z2|x) q(z1|x, z2),
            p(z2) p(z1|z2) p(x|z1, z2) (kind vae only; both layers have `latent_dim`
            units; `model/hierarchical.py`).
    """

    SECTION: ClassVar[str] = "ModelConfig.density"

    train_samples: int = 1
    prior: str | None = None
    pseudo_inputs: int = 100
    stochastic_layers: int = 1

    def __post_init__(self) -> None:
        require(self, "train_samples", isinstance(self.train_samples, int) and self.train_samples >= 1,
                "must be an integer >= 1")
        require(self, "prior", self.prior is None or self.prior in PRIORS, f"must be one of {PRIORS} or null")
        require(self, "pseudo_inputs", isinstance(self.pseudo_inputs, int) and self.pseudo_inputs >= 1,
                "must be a positive integer")
        require(self, "stochastic_layers", isinstance(self.stochastic_layers, int) and self.stochastic_layers >= 1,
                "must be a positive integer")


@dataclasses.dataclass(frozen=True)
class M2Config(ConfigBase):
    """The options of the semi-supervised M2 (`ModelConfig.m2`), of kinds m2 and m1m2 (whose
    second stage is an M2); other kinds leave them at their defaults.

    Args:
        alpha: the weight of the classification loss -log q(y|x) per labelled example
            (the paper's alpha = 0.1 N on its summed objective is 0.1 * N / N_labelled
            here). None: the training pipeline fills in 0.1 * (N / N_labelled)^2, which
            measured better with few labels (`pipelines.train.inputs.resolve_model`); an
            M2 built directly needs a number.
        classifier: the q(y|x) network, `"mlp"` or `"conv"` (`model/classifiers.py`);
            None (the default): the same as `ModelConfig.architecture`. A conv classifier
            beside MLP encoder and decoder costs little (the unlabelled objective decodes
            every image once per class) and sees the image's local structure.
        classifier_shift: while training, the classifier sees each image moved by a
            random whole number of pixels, up to this many in each direction (Keras'
            `RandomTranslation`, empty pixels filled with 0), so that the few labelled
            images it learns from are not learnt by heart; 0 (the default): the images as
            they are. Evaluation, `classify` and the export always see them as they are.
            For m1m2, the classifier sees M1's code of the shifted image.
    """

    SECTION: ClassVar[str] = "ModelConfig.m2"

    alpha: float | None = None
    classifier: str | None = None
    classifier_shift: int = 0

    def __post_init__(self) -> None:
        require(self, "alpha", self.alpha is None or self.alpha >= 0, "must be >= 0 or null")
        require(self, "classifier", self.classifier is None or self.classifier in ARCHITECTURES,
                f"must be one of {ARCHITECTURES} or null")
        require(self, "classifier_shift", isinstance(self.classifier_shift, int) and self.classifier_shift >= 0,
                "must be an integer >= 0")


@dataclasses.dataclass(frozen=True)
class M1M2Config(ConfigBase):
    """The networks of M1+M2's second stage (`ModelConfig.m1m2`; other kinds leave them at
    their defaults): an M2 whose x is M1's code z1 (`model/m1m2.py`). The model config's
    own fields (`architecture`, `latent_dim`, `hidden_units`, ...) describe M1; M2's
    options (`ModelConfig.m2`: alpha, an MLP classifier) apply to the second stage.

    Args:
        latent_dim: size of M2's code z2 (the paper's 50), the code the export serves.
        hidden_units: widths of M2's dense hidden layers over z1 (the paper's one layer of
            500), for its encoder, decoder and classifier.
    """

    SECTION: ClassVar[str] = "ModelConfig.m1m2"

    latent_dim: int = 50
    hidden_units: tuple[int, ...] = (500,)

    def __post_init__(self) -> None:
        require(self, "latent_dim", isinstance(self.latent_dim, int) and self.latent_dim > 0,
                "must be a positive integer")
        require(self, "hidden_units", len(self.hidden_units) > 0
                and all(isinstance(u, int) and u > 0 for u in self.hidden_units), "must be positive integers")


@dataclasses.dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """The networks, the likelihood and the objective of a VAE (kind-specific options in sections).

    What every kind shares, and the kind-specific options in their sections (`density`,
    `m2`).

    Args:
        image_shape: (height, width, channels) of the images.
        architecture: `"mlp"` (dense layers) or `"conv"` (strided convolutions).
        latent_dim: size of the latent vector z.
        hidden_units: widths of the dense hidden layers (encoder order; the decoder
            mirrors them). For `"conv"`, one dense layer of `hidden_units[0]` sits
            between the convolutions and the latent code when the tuple is not empty.
        conv_filters: filters of the stride-2 convolutions (encoder order).
        kernel_size: convolution kernel size.
        activation: hidden activation (any Keras activation name).
        block: the MLP's hidden layers: `"dense"`, `"gated"` (act(Wx) * sigmoid(Vx), the
            VampPrior paper's GatedDense) or `"residual"` (a dense layer plus a residual
            dense correction); `"dense"` for the conv architecture.
        likelihood: decoder distribution, `"bernoulli"` (logits) or `"gaussian"`.
        gaussian_log_scale: initial (or fixed) log standard deviation of the Gaussian.
        learn_gaussian_scale: learn the Gaussian log-scale (one scalar) by SGD.
        beta: weight of the KL term in the training objective; None (the default): the
            kind's for its condition, `ModelConfig.kl_beta` (4 for a label cvae, whose
            generated images then show the class they were asked for; 1 otherwise).
        kl_warmup_steps: optimizer steps over which the KL weight ramps from 0 to beta.
        kind: the model kind, one of `model.kinds.REGISTRY`: `"vae"`, `"cvae"`
            (conditional), `"m2"` (semi-supervised: a label cvae plus a classifier
            q(y|x); unlabelled examples carry the label -1) or `"m1m2"` (an M2 over the
            codes of a vae, M1, trained first).
        condition: what a cvae is conditioned on (a conditional kind's conditions are
            declared with it, `model/kinds.py`): `"label"` (one-hot class) or the observed
            half, `"left_half"`, `"right_half"`, `"top_half"`, `"bottom_half"`. A `"vae"`,
            an `"m2"` and an `"m1m2"` keep the default `"label"`.
        num_classes: classes of a label-conditioned model (the training pipeline sets it
            from the dataset).
        density: the objective's k, the prior and the stochastic layers (`DensityConfig`).
        m2: M2's options (`M2Config`), of kinds m2 and m1m2.
        m1m2: the networks of M1+M2's second stage (`M1M2Config`).

    Config files written before the sections existed spell their fields flat
    (`"alpha": 30.0`, `"prior": "vamp"`): they load as they are (`MOVED`), and so do
    overrides such as `model.prior=gaussian` (now `model.density.prior`).
    """

    MOVED: ClassVar[dict[str, str]] = {
        **{f: f"density.{f}" for f in ("train_samples", "prior", "pseudo_inputs", "stochastic_layers")},
        **{f: f"m2.{f}" for f in ("alpha", "classifier", "classifier_shift")},
    }

    image_shape: tuple[int, int, int] = (28, 28, 1)
    architecture: str = "mlp"
    latent_dim: int = 16
    hidden_units: tuple[int, ...] = (512, 256)
    conv_filters: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    activation: str = "relu"
    block: str = "dense"
    likelihood: str = "bernoulli"
    gaussian_log_scale: float = 0.0
    learn_gaussian_scale: bool = True
    beta: float | None = None
    kl_warmup_steps: int = 0
    kind: str = "vae"
    condition: str = "label"
    num_classes: int = 10
    density: DensityConfig = dataclasses.field(default_factory=DensityConfig)
    m2: M2Config = dataclasses.field(default_factory=M2Config)
    m1m2: M1M2Config = dataclasses.field(default_factory=M1M2Config)

    @property
    def prior_name(self) -> str:
        """The prior in use: `density.prior`, or when it is None the kind's default (its
        first declared prior, `model/kinds.py`: `"vamp"` for kind vae, `"gaussian"` for
        cvae and m2)."""
        return self.density.prior or kinds.lookup(self.kind).priors[0]

    @property
    def kl_beta(self) -> float:
        """The KL weight in use: `beta`, or when it is None the kind's default for its
        condition (`model/kinds.py` `Kind.betas`: 4 for kind cvae on a label, else 1)."""
        if self.beta is not None:
            return float(self.beta)
        return kinds.lookup(self.kind).beta_for(self.condition)

    @property
    def classifier_architecture(self) -> str:
        """M2's q(y|x) network: `m2.classifier`, or `architecture` when it is None."""
        return self.m2.classifier or self.architecture

    @property
    def labels_condition(self) -> bool:
        """Whether the model is conditioned on (or classifies) the class label."""
        return kinds.lookup(self.kind).serves(self.condition)[0]

    def __post_init__(self) -> None:
        require(self, "image_shape", len(self.image_shape) == 3
                and all(isinstance(d, int) and d > 0 for d in self.image_shape),
                "must be three positive integers (H, W, C)")
        require_choice(self, "architecture", ARCHITECTURES)
        require(self, "latent_dim", isinstance(self.latent_dim, int) and self.latent_dim > 0,
                "must be a positive integer")
        require(self, "hidden_units", all(isinstance(u, int) and u > 0 for u in self.hidden_units),
                "must be positive integers")
        require(self, "hidden_units", self.architecture != "mlp" or len(self.hidden_units) > 0,
                "must not be empty for the mlp architecture")
        require(self, "conv_filters", all(isinstance(f, int) and f > 0 for f in self.conv_filters),
                "must be positive integers")
        require(self, "conv_filters", self.architecture != "conv" or len(self.conv_filters) > 0,
                "must not be empty for the conv architecture")
        require(self, "kernel_size", isinstance(self.kernel_size, int) and self.kernel_size > 0,
                "must be a positive integer")
        require_choice(self, "likelihood", LIKELIHOODS)
        require_choice(self, "block", BLOCKS)
        require(self, "block", self.block == "dense" or self.architecture == "mlp",
                "must be 'dense' for model.architecture='conv'")
        require(self, "beta", self.beta is None or self.beta >= 0, "must be >= 0 or null")
        require(self, "kl_warmup_steps", isinstance(self.kl_warmup_steps, int) and self.kl_warmup_steps >= 0,
                "must be an integer >= 0")
        require(self, "gaussian_log_scale", -20.0 <= self.gaussian_log_scale <= 20.0,
                "must be within [-20, 20]")
        require_choice(self, "condition", CONDITIONS)
        require(self, "num_classes", isinstance(self.num_classes, int) and self.num_classes >= 2,
                "must be an integer >= 2")
        require(self.m2, "classifier_shift", 2 * self.m2.classifier_shift < min(self.image_shape[:2]),
                "must be less than half the image's height and width")
        require(self, "conv_filters", self.classifier_architecture != "conv" or len(self.conv_filters) > 0,
                "must not be empty for a conv classifier")
        kinds.check(self)  # what the kind declares it reads and supports
        if self.condition in HALF_CONDITIONS:
            axis = 0 if self.condition in ("top_half", "bottom_half") else 1  # rows or columns
            require(self, "image_shape", self.image_shape[axis] >= 2,
                    f"must have at least 2 {'rows' if axis == 0 else 'columns'} to split in halves")
