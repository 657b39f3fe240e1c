"""The serving contract: the one place that names signatures, tensor keys, shapes and limits.

The exporter writes these signatures, the local server enforces them and the client calls
them; TF Serving serves the same export. Every other module imports the names from here,
so no key is spelled twice.

Shapes are written with symbols: `N` is any number of rows, `H`, `W`, `C` are the image
dimensions and `D` the latent dimension of the exported model.
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


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature: key, numpy dtype name and symbolic shape."""

    key: str
    dtype: str
    shape: tuple[str | int, ...]

    def resolve(self, image_shape: tuple[int, int, int], latent_dim: int) -> tuple[int | None, ...]:
        """The concrete shape for a model; None marks a dimension of any size."""
        sizes = {"N": None, "H": image_shape[0], "W": image_shape[1], "C": image_shape[2], "D": latent_dim}
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
            "z ~ N(0, temperature^2 I) drawn statelessly from `seed`, decoded. All three "
            "inputs are required (TF Serving feeds every signature input).",
        ),
        SignatureSpec(
            ENCODE,
            (_IMAGES,),
            (TensorSpec(Z_MEAN, "float32", ("N", "D")), TensorSpec(Z_LOG_VAR, "float32", ("N", "D"))),
            "q(z|x) of images in [0, 1].",
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
    for key in (IMAGES, Z):
        rows = np.shape(inputs[key])[0] if key in inputs and np.ndim(inputs[key]) > 0 else 0
        if rows > MAX_BATCH:
            return f"{key} has {rows} rows; at most {MAX_BATCH} rows per request"
    if TEMPERATURE in inputs:
        temperature = inputs[TEMPERATURE]
        finite = math.isfinite(temperature) if np.ndim(temperature) == 0 else bool(np.isfinite(temperature).all())
        if not finite:
            return f"{TEMPERATURE} must be finite"
    return None


def rows_per_request(row_bytes: int, max_message_bytes: int = MAX_MESSAGE_BYTES) -> int:
    """How many rows of `row_bytes` bytes one request (or response) may carry."""
    budget = int(max_message_bytes * 0.9)  # room for the proto framing
    return max(1, min(MAX_BATCH, budget // max(1, row_bytes)))


def image_bytes(image_shape: tuple[int, ...]) -> int:
    """Bytes of one float32 image."""
    return 4 * math.prod(image_shape)
