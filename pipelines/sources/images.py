"""From raw inputs to the model's images: decoding, scaling, resizing, and bad-input checks.

Every input becomes float32 in [0, 1] with the model's (H, W, C). Integer pixels are read
as 0..255 and divided by 255; float pixels must already be in [0, 1]. An input that
cannot be made so (undecodable, wrong shape without `--resize`, NaN, out of range) is a
bad input: the job stops on it, or records it with `--skip-bad`.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# The leading bytes of the encoded formats a TFRecord image feature may hold.
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM")
_GREY = np.array([0.2989, 0.5870, 0.1140], np.float32)  # tf.image.rgb_to_grayscale's weights


class BadInput(ValueError):
    """One input cannot be encoded; the message is the reason recorded in the manifest."""


def shape_text(shape) -> str:
    return "x".join(str(d) for d in shape)


def looks_encoded(data: bytes) -> bool:
    """Whether `data` starts like a PNG, JPEG, GIF or BMP file."""
    return data.startswith(_MAGIC)


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG (or GIF, BMP) bytes -> uint8 (h, w, c) with c in 1..4.

    Raises:
        BadInput: the bytes are not a readable image of 8-bit grey, RGB or RGBA pixels.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode == "1":
                image = image.convert("L")
            elif image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode in ("CMYK", "YCbCr"):
                image = image.convert("RGB")
            if image.mode not in ("L", "LA", "RGB", "RGBA"):
                raise BadInput(f"unsupported pixel mode {image.mode!r} (8-bit grey, RGB or RGBA only)")
            array = np.asarray(image)
    except BadInput:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadInput(f"cannot decode the image: {err}") from None
    return array[..., None] if array.ndim == 2 else array


def scale_of(dtype) -> float:
    """The value of a white pixel: 255 for integer arrays, 1 for float and bool."""
    return 255.0 if np.issubdtype(dtype, np.integer) else 1.0


def to_unit_float(array: np.ndarray) -> np.ndarray:
    """uint8/integer 0..255 or float 0..1 pixels -> float32 (unchecked; see `bad_rows`)."""
    if array.dtype == np.float32:
        return array
    if np.issubdtype(array.dtype, np.integer):
        return np.divide(array, np.float32(255.0), dtype=np.float32)  # one pass, = astype(float32) / 255
    return array.astype(np.float32)


def _channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(..., h, w, c) float32 -> (..., h, w, channels): grey <-> RGB, alpha dropped or added."""
    have = images.shape[-1]
    if have == channels:
        return images
    colour = images[..., :3] if have >= 3 else np.repeat(images[..., :1], 3, axis=-1)
    if channels == 1:
        return (colour @ _GREY)[..., None] if have >= 3 else images[..., :1]
    if channels == 3:
        return colour
    if channels == 4:
        alpha = images[..., 3:4] if have == 4 else (images[..., 1:2] if have == 2 else np.ones_like(images[..., :1]))
        return np.concatenate([colour, alpha], axis=-1)
    raise BadInput(f"cannot convert {have} channels to {channels}")


def _resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, h, w, C) float32 -> (N, height, width, C), bilinear with antialiasing."""
    if images.shape[1:3] == (height, width):
        return images
    resized = tf.image.resize(images, (height, width), method="bilinear", antialias=True)
    return np.clip(resized.numpy(), 0.0, 1.0)


def conform(image: np.ndarray, image_shape, resize: bool) -> np.ndarray:
    """One (h, w, c) image -> float32 (H, W, C).

    Raises:
        BadInput: its shape differs and `resize` is off, or its channels cannot be converted.
    """
    if image.ndim == 2:
        image = image[..., None]
    if tuple(image.shape) != tuple(image_shape) and not resize:
        raise BadInput(f"image is {shape_text(image.shape)}, the model expects "
                       f"{shape_text(image_shape)} (pass --resize to resize and convert channels)")
    pixels = to_unit_float(image)
    if image.dtype != np.uint8:
        reason = bad_rows(pixels[None], scale_of(image.dtype)).get(0)
        if reason:
            raise BadInput(reason)
    if tuple(image.shape) != tuple(image_shape):
        pixels = _resize(_channels(pixels, image_shape[2])[None], image_shape[0], image_shape[1])[0]
    return pixels


def conform_batch(images: np.ndarray, image_shape, resize: bool) -> np.ndarray:
    """(N, h, w[, c]) of one shape -> float32 (N, H, W, C).

    The caller has checked the shape (or `resize` is on) and dropped the `bad_rows`.
    """
    if images.ndim == 3:
        images = images[..., None]
    images = to_unit_float(images)
    if tuple(images.shape[1:]) != tuple(image_shape) and resize:
        images = _resize(_channels(images, image_shape[2]), image_shape[0], image_shape[1])
    return images


def bad_rows(images: np.ndarray, scale: float = 1.0) -> dict[int, str]:
    """Rows of float32 (N, H, W, C) with NaN/inf or values outside [0, 1] -> their reasons.

    Args:
        images: the images after scaling to [0, 1].
        scale: the input's white value (255 for integer inputs), for the message.
    """
    flat = images.reshape(len(images), -1)
    if not len(flat) or not flat.shape[1]:
        return {}
    finite = np.isfinite(flat).all(axis=1)
    low, high = flat.min(axis=1), flat.max(axis=1)
    reasons = {}
    for row in np.flatnonzero(~finite | (low < 0) | (high > 1)):
        if not finite[row]:
            reasons[int(row)] = "NaN or infinite pixel values"
        else:
            reasons[int(row)] = (f"pixel values outside [0, {scale:g}] "
                                 f"(min {low[row] * scale:g}, max {high[row] * scale:g})")
    return reasons
