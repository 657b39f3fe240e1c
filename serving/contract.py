"""The serving contract: the one place that names signatures, tensor keys, shapes and limits.

The exporter writes these signatures, the local server enforces them and the client calls
them; TF Serving serves the same export. Every other module imports the names from here,
so no key is spelled twice.

Shapes are written with symbols: `N` is any number of rows, `H`, `W`, `C` are the image
dimensions, `D` the latent dimension and `K` the number of classes of the exported model.

Each model kind has its own set of signatures (`signatures_for`): the plain VAE's
(`SIGNATURES`), a label-conditioned CVAE's (`LABEL_SIGNATURES`: every signature that decodes
or encodes takes the class `labels` too), M2's (`M2_SIGNATURES`: generation and decoding
take labels; `encode`, `reconstruct` and `log_likelihood` take images alone and use the
classifier q(y|x), see their docs; plus `classify`) and a half-conditioned CVAE's
(`HALF_SIGNATURES`: `complete` instead of `generate`).

Class names: TF Serving's GetModelMetadata answers only `signature_def` and a SignatureDef
has no field for them, so they travel in `assets.extra/serving_contract.json`
(`class_names`, with `num_classes`), beside the signatures, and nowhere in the metadata.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Final

import numpy as np

CONTRACT_VERSION: Final = 1
MODEL_NAME: Final = "vae"

# === Signature names ===
ENCODE: Final = "encode"
DECODE: Final = "decode"
GENERATE: Final = "generate"
RECONSTRUCT: Final = "reconstruct"
LOG_LIKELIHOOD: Final = "log_likelihood"
# `generate` for several requests at once; the local server's batcher uses it.
GENERATE_BATCH: Final = "generate_batch"
# Conditional kinds: M2's classifier q(y|x), and a half-conditioned CVAE's completion.
CLASSIFY: Final = "classify"
COMPLETE: Final = "complete"
# TF Serving answers an empty signature_name with this key; it is `generate`.
DEFAULT_SIGNATURE: Final = "serving_default"
DEFAULT_SIGNATURE_TARGET: Final = GENERATE

# === Tensor keys ===
IMAGES: Final = "images"
Z: Final = "z"
Z_MEAN: Final = "z_mean"
Z_LOG_VAR: Final = "z_log_var"
NUM_SAMPLES: Final = "num_samples"
SEED: Final = "seed"
TEMPERATURE: Final = "temperature"
LOG_LIKELIHOOD_KEY: Final = "log_likelihood"
LABELS: Final = "labels"  # int32 [N] class labels in [0, K)
PROBABILITIES: Final = "probabilities"  # float32 [N, K], q(y|x)

# === Limits ===
MAX_NUM_SAMPLES: Final = 1024  # images per generate request
MAX_BATCH: Final = 1024  # rows (images or latent vectors) per request
MAX_MESSAGE_BYTES: Final = 64 * 2**20  # gRPC send and receive limit, both ways
IWAE_NUM_SAMPLES: Final = 100  # k of the log_likelihood signature
IWAE_SEED: Final = (0, 0)  # fixed: the same image always gets the same score

# === Export layout (TF Serving's) ===
SAVED_MODEL_FILE: Final = "saved_model.pb"
ASSETS_EXTRA: Final = "assets.extra"
CONFIG_FILE: Final = "config.json"
METRICS_FILE: Final = "metrics.json"
CONTRACT_FILE: Final = "serving_contract.json"
WARMUP_FILE: Final = "tf_serving_warmup_requests"

# === Network ===
DEFAULT_HOST: Final = "127.0.0.1"
GRPC_PORT: Final = 8500
REST_PORT: Final = 8501
CONTAINER_MODEL_BASE_PATH: Final = f"/models/{MODEL_NAME}"
HEALTH_SERVICE: Final = "tensorflow.serving.PredictionService"
# The one GetModelMetadata field TF Serving answers: the signatures as a SignatureDefMap.
SIGNATURE_DEF_FIELD: Final = "signature_def"

# === Model kinds as served (the `kind` field of serving_contract.json) ===
PLAIN_KIND: Final = "vae"  # an unconditional VAE (an export without `kind` is one too)
LABEL_KIND: Final = "label_cvae"  # a CVAE conditioned on the class label
HALF_KIND: Final = "half_cvae"  # a CVAE conditioned on an observed half of the image
M2_KIND: Final = "m2"  # the semi-supervised M2 (a label CVAE with a classifier)
LABEL_KINDS: Final = (LABEL_KIND, M2_KIND)  # kinds whose signatures take `labels`
# Fields of serving_contract.json beyond those of every version (`serving/description.py`).
CONTRACT_KIND_FIELD: Final = "kind"
CONTRACT_CONDITION_FIELD: Final = "condition"
NUM_CLASSES_FIELD: Final = "num_classes"
CLASS_NAMES_FIELD: Final = "class_names"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature: key, numpy dtype name and symbolic shape."""

    key: str
    dtype: str
    shape: tuple[str | int, ...]

    def resolve(
        self, image_shape: tuple[int, int, int], latent_dim: int, num_classes: int | None = None
    ) -> tuple[int | None, ...]:
        """The concrete shape for a model; None marks a dimension of any size."""
        sizes = {"N": None, "H": image_shape[0], "W": image_shape[1], "C": image_shape[2], "D": latent_dim,
                 "K": num_classes}
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    """A signature: its inputs, its outputs and what it is for."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    doc: str


_IMAGES = TensorSpec(IMAGES, "float32", ("N", "H", "W", "C"))
_Z = TensorSpec(Z, "float32", ("N", "D"))

SIGNATURES: Final[dict[str, SignatureSpec]] = {
    s.name: s
    for s in (
        SignatureSpec(
            GENERATE,
            (
                TensorSpec(NUM_SAMPLES, "int32", ()),
                TensorSpec(SEED, "int64", (2,)),
                TensorSpec(TEMPERATURE, "float32", ()),
            ),
            (_IMAGES, _Z),
            "z ~ N(0, temperature^2 I) drawn statelessly from `seed`, decoded (a VampPrior "
            "model draws a pseudo-input, then z from its posterior with the noise scaled by "
            "the temperature; a two-layer model draws z = z2 so, then z1 ~ p(z1|z2), top-down). "
            "All three inputs are required (TF Serving feeds every signature input).",
        ),
        SignatureSpec(
            ENCODE,
            (_IMAGES,),
            (TensorSpec(Z_MEAN, "float32", ("N", "D")), TensorSpec(Z_LOG_VAR, "float32", ("N", "D"))),
            "q(z|x) of images in [0, 1]; for a model with two stochastic layers, the top "
            "layer's q(z2|x) (`decode` then takes z2, with z1 at the mean of p(z1|z2)).",
        ),
        SignatureSpec(DECODE, (_Z,), (_IMAGES,), "The decoder's mean image for each z."),
        SignatureSpec(RECONSTRUCT, (_IMAGES,), (_IMAGES,), "decode(z_mean) of each image."),
        SignatureSpec(
            LOG_LIKELIHOOD,
            (_IMAGES,),
            (TensorSpec(LOG_LIKELIHOOD_KEY, "float32", ("N",)),),
            f"IWAE estimate of log p(x) in nats, k={IWAE_NUM_SAMPLES}, fixed seed, drawn per "
            "image: a score does not depend on the other images of the request.",
        ),
        SignatureSpec(
            GENERATE_BATCH,
            (
                TensorSpec(NUM_SAMPLES, "int32", ("N",)),
                TensorSpec(SEED, "int64", ("N", 2)),
                TensorSpec(TEMPERATURE, "float32", ("N",)),
            ),
            (_IMAGES, _Z),
            "Several generate requests in one call; their rows are concatenated in order.",
        ),
    )
}

# Row-wise signatures: every input and output has the rows on axis 0.
ROW_SIGNATURES: Final = (ENCODE, DECODE, RECONSTRUCT, LOG_LIKELIHOOD)

# === Conditional kinds ===
_LABELS = TensorSpec(LABELS, "int32", ("N",))
_GENERATE_LABELS = SignatureSpec(
    GENERATE,
    (_LABELS, TensorSpec(SEED, "int64", (2,)), TensorSpec(TEMPERATURE, "float32", ())),
    (_IMAGES, _Z),
    "One image per label: z ~ N(0, temperature^2 I) drawn statelessly from `seed`, decoded "
    "with the label's one-hot condition. A label outside [0, K) is INVALID_ARGUMENT.",
)
_DECODE_LABELS = SignatureSpec(
    DECODE, (_Z, _LABELS), (_IMAGES,), "The decoder's mean image for each z and its label (one label per row)."
)
_CLASSIFY = SignatureSpec(
    CLASSIFY, (_IMAGES,), (TensorSpec(PROBABILITIES, "float32", ("N", "K")),),
    "q(y|x), the classifier's class probabilities of each image.",
)
_ENCODED = (TensorSpec(Z_MEAN, "float32", ("N", "D")), TensorSpec(Z_LOG_VAR, "float32", ("N", "D")))
_SCORE = (TensorSpec(LOG_LIKELIHOOD_KEY, "float32", ("N",)),)

LABEL_SIGNATURES: Final[dict[str, SignatureSpec]] = {
    s.name: s
    for s in (
        _GENERATE_LABELS,
        SignatureSpec(ENCODE, (_IMAGES, _LABELS), _ENCODED, "q(z|x, y) of images in [0, 1] with their labels."),
        _DECODE_LABELS,
        SignatureSpec(RECONSTRUCT, (_IMAGES, _LABELS), (_IMAGES,), "decode(z_mean, y) of each image and label."),
        SignatureSpec(
            LOG_LIKELIHOOD, (_IMAGES, _LABELS), _SCORE,
            f"IWAE estimate of log p(x|y) in nats, k={IWAE_NUM_SAMPLES}, fixed seed, drawn per image.",
        ),
    )
}

M2_SIGNATURES: Final[dict[str, SignatureSpec]] = {
    s.name: s
    for s in (
        _GENERATE_LABELS,
        SignatureSpec(
            ENCODE, (_IMAGES,), _ENCODED,
            "q(z|x, y) of images in [0, 1], y the classifier's most likely class argmax q(y|x) "
            "(no labels needed).",
        ),
        _DECODE_LABELS,
        SignatureSpec(RECONSTRUCT, (_IMAGES,), (_IMAGES,), "decode(z_mean, y), y = argmax q(y|x), of each image."),
        SignatureSpec(
            LOG_LIKELIHOOD, (_IMAGES,), _SCORE,
            f"IWAE estimate of the marginal log p(x) = log sum_y p(y) p(x|y) in nats, k={IWAE_NUM_SAMPLES} "
            "per class, fixed seed, drawn per image.",
        ),
        _CLASSIFY,
    )
}

HALF_SIGNATURES: Final[dict[str, SignatureSpec]] = {
    s.name: s
    for s in (
        SignatureSpec(
            COMPLETE,
            (_IMAGES, TensorSpec(SEED, "int64", (2,)), TensorSpec(TEMPERATURE, "float32", ())),
            (_IMAGES,),
            "Each image's observed half as given and the other half drawn from p(x|z, observed), "
            "z ~ N(0, temperature^2 I) from `seed`; the pixels of the hidden half are ignored.",
        ),
        SignatureSpec(ENCODE, (_IMAGES,), _ENCODED, "q(z|x, observed half) of whole images in [0, 1]."),
        SignatureSpec(
            RECONSTRUCT, (_IMAGES,), (_IMAGES,), "The observed half kept, the other decoded from z_mean."
        ),
        SignatureSpec(
            LOG_LIKELIHOOD, (_IMAGES,), _SCORE,
            f"IWAE estimate of log p(hidden half | observed half) in nats, k={IWAE_NUM_SAMPLES}, fixed seed.",
        ),
    )
}

_KIND_SIGNATURES: Final = {PLAIN_KIND: SIGNATURES, LABEL_KIND: LABEL_SIGNATURES, M2_KIND: M2_SIGNATURES,
                           HALF_KIND: HALF_SIGNATURES}
# Row-wise signatures of any kind (ROW_SIGNATURES plus M2's classify): the batcher joins them.
ANY_ROW_SIGNATURES: Final = (*ROW_SIGNATURES, CLASSIFY)


# The served kind of a model by what it declares it serves: (takes_labels, classifies, completes).
_KIND_OF_FEATURES: Final = {
    (False, False, False): PLAIN_KIND,
    (True, False, False): LABEL_KIND,
    (True, True, False): M2_KIND,
    (False, False, True): HALF_KIND,
}
_DEFAULT_SIGNATURE: Final = {HALF_KIND: COMPLETE}  # the others: DEFAULT_SIGNATURE_TARGET


def kind_of_features(takes_labels: bool, classifies: bool, completes: bool) -> str:
    """The served kind of a model that declares these features (the exporter reads them
    from the model object: its `takes_labels`, `classifies` and `completes`).

    Raises:
        ValueError: no served kind has these features.
    """
    features = (bool(takes_labels), bool(classifies), bool(completes))
    if features not in _KIND_OF_FEATURES:
        raise ValueError(f"no served kind takes_labels={features[0]}, classifies={features[1]}, "
                         f"completes={features[2]}")
    return _KIND_OF_FEATURES[features]


def signatures_for(kind: str) -> dict[str, SignatureSpec]:
    """The signatures an export of the served `kind` has.

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in _KIND_SIGNATURES:
        raise ValueError(f"unknown served kind {kind!r}; expected one of {sorted(_KIND_SIGNATURES)}")
    return _KIND_SIGNATURES[kind]


def default_signature_for(kind: str) -> str:
    """The signature `serving_default` stands for: `generate`, or `complete` for a half CVAE."""
    return _DEFAULT_SIGNATURE.get(kind, DEFAULT_SIGNATURE_TARGET)


def all_signatures() -> dict[str, list[SignatureSpec]]:
    """Every signature name with its variants over the kinds (for checks and docs)."""
    found: dict[str, list[SignatureSpec]] = {}
    for specs in _KIND_SIGNATURES.values():
        for name, spec in specs.items():
            if spec not in found.setdefault(name, []):
                found[name].append(spec)
    return found


def label_error(labels, num_classes: int) -> str | None:
    """The error of class labels outside [0, num_classes), or None."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = sorted({int(v) for v in labels.reshape(-1) if not 0 <= v < num_classes})
        return f"{LABELS} must be within [0, {num_classes}), got {bad[:10]}"
    return None


def limit_error(inputs: Mapping[str, np.ndarray]) -> str | None:
    """Checks a request's inputs against the limits; returns the error message or None.

    Args:
        inputs: the request's tensors by key (already of the signature's dtypes).
    """
    if NUM_SAMPLES in inputs:
        counts = inputs[NUM_SAMPLES]
        if np.ndim(counts) == 0:
            low = high = int(counts)
        else:
            low, high = np.min(counts, initial=0), np.max(counts, initial=0)
        if low < 0 or high > MAX_NUM_SAMPLES:
            return f"{NUM_SAMPLES} must be within [0, {MAX_NUM_SAMPLES}], got {np.asarray(counts).tolist()}"
    for key in (IMAGES, Z, LABELS):
        rows = np.shape(inputs[key])[0] if key in inputs and np.ndim(inputs[key]) > 0 else 0
        message = rows_error(key, rows)
        if message is not None:
            return message
    if LABELS in inputs:
        for key in (IMAGES, Z):
            if key in inputs and np.shape(inputs[key])[:1] != np.shape(inputs[LABELS])[:1]:
                return (f"{LABELS} has {np.shape(inputs[LABELS])[0]} rows and {key} has "
                        f"{np.shape(inputs[key])[0]}; one label per row")
    if TEMPERATURE in inputs:
        temperature = inputs[TEMPERATURE]
        finite = math.isfinite(temperature) if np.ndim(temperature) == 0 else bool(np.isfinite(temperature).all())
        if not finite:
            return f"{TEMPERATURE} must be finite"
    return None


def rows_error(key: str, rows: int) -> str | None:
    """The limit error of an input `key` with `rows` rows, or None.

    The server checks it on a request's declared shapes before it reads any tensor, so a
    request that declares more rows than the limit never reaches an allocation.
    """
    if key in (IMAGES, Z, LABELS) and rows > MAX_BATCH:
        return f"{key} has {rows} rows; at most {MAX_BATCH} rows per request"
    return None


def rows_per_request(row_bytes: int, max_message_bytes: int = MAX_MESSAGE_BYTES) -> int:
    """How many rows of `row_bytes` bytes one request (or response) may carry."""
    budget = int(max_message_bytes * 0.9)  # room for the proto framing
    return max(1, min(MAX_BATCH, budget // max(1, row_bytes)))


def image_bytes(image_shape: tuple[int, ...]) -> int:
    """Bytes of one float32 image."""
    return 4 * math.prod(image_shape)
