"""Image grids as PNG files, readable at a glance: what `vae generate` writes and what the
training pictures (`pipelines/plots.py`) are drawn with. numpy and PIL only.

A grid is tiled at the images' own resolution (`image_grid`), then enlarged by a whole
factor, nearest neighbour, until its longer side is at least `MIN_SIDE` pixels
(`upscale`): 16 Fashion-MNIST images tile to 122 px, which a viewer shows as a smudge.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
MIN_SIDE = 512  # pixels on the longer side of a saved grid, at least


def image_grid(
    images: np.ndarray, columns: int | None = None, padding: int = 2, background: float = 0.0
) -> np.ndarray:
    """Tiles (N, H, W, C) images in [0, 1] into one uint8 picture, one pixel per pixel.

    Args:
        images: the images; values are clipped to [0, 1]. C is 1 (grey) or 3 (RGB).
        columns: images per row (default: a near-square grid).
        padding: pixels between images and around them.
        background: the padding's value in [0, 1] (0 black, 1 white).

    Returns:
        (rows * (H + p) + p, columns * (W + p) + p[, 3]) uint8 array.

    Raises:
        ValueError: `images` is not (N, H, W, 1 or 3).
    """
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 1 or 3), got {images.shape}")
    count, height, width, channels = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    shape = (rows * (height + padding) + padding, columns * (width + padding) + padding, channels)
    grid = np.full(shape, round(float(np.clip(background, 0.0, 1.0)) * 255), np.uint8)
    for index, image in enumerate(images):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top : top + height, left : left + width] = np.round(image * 255).astype(np.uint8)
    return grid[..., 0] if channels == 1 else grid


def upscale(picture: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """`picture` enlarged by the smallest whole factor that makes its longer side at least
    `min_side` pixels, each pixel repeated (nearest neighbour: edges stay sharp); a picture
    already that large is returned as it is.

    Args:
        picture: (height, width[, channels]) array.
        min_side: the longer side's least size in pixels.

    Returns:
        (k * height, k * width[, channels]) array, k >= 1.
    """
    factor = max(1, math.ceil(min_side / max(1, max(picture.shape[:2]))))
    if factor == 1:
        return picture
    return np.repeat(np.repeat(picture, factor, axis=0), factor, axis=1)


def save_grid(
    images: np.ndarray,
    path: str | os.PathLike,
    columns: int | None = None,
    padding: int = 2,
    background: float = 0.0,
    min_side: int = MIN_SIDE,
) -> Path:
    """Writes `images` as one PNG grid, enlarged to at least `min_side` px (see `upscale`).

    Args:
        images: (N, H, W, C) floats in [0, 1]; see `image_grid`.
        path: the PNG file; its folder is created.
        columns, padding, background: see `image_grid`.
        min_side: see `upscale`; 0 keeps one pixel per pixel.

    Returns:
        `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = upscale(image_grid(images, columns, padding, background), min_side)
    Image.fromarray(picture).save(path, format="PNG")
    return path


def generate_grid(
    target: str,
    out: str | os.PathLike,
    n: int = 16,
    seed: int | None = None,
    temperature: float = 1.0,
    model_name: str | None = None,
    timeout: float = 10.0,
    tls=None,
    wait_seconds: float = 0.0,
    labels=None,
    columns: int | None = None,
    version: int | None = None,
    version_label: str | None = None,
) -> Path:
    """Asks a server for `n` generated images (one per label of a label model) and writes
    them as a PNG grid.

    Args:
        target: `host:port` of TF Serving or `vae serve`.
        out: the PNG path.
        n: number of images (ignored with `labels`).
        seed: the generation seed (None: random).
        temperature: scale of the latent draws.
        model_name: served model name (default: the contract's).
        timeout: deadline per request, in seconds.
        tls: `serving.client.TLSOptions`, or None for plaintext.
        wait_seconds: first wait up to this long for the server to have a version loaded.
        labels: class labels for a label-conditioned model (CVAE on labels, M2), or None.
        columns: images per grid row (default: a near-square grid).
        version: ask for this version (default: the latest loaded).
        version_label: ask for the version behind this label (exclusive with `version`).

    Returns:
        The PNG path.

    Raises:
        serving.client.ServingError: the server refused or failed the call.
        TimeoutError: no version became available within `wait_seconds`.
    """
    from serving import contract
    from serving.client import VAEClient

    with VAEClient(target, model_name or contract.MODEL_NAME, timeout, tls=tls, version=version,
                   version_label=version_label) as client:
        if wait_seconds > 0:
            client.wait_until_ready(timeout=wait_seconds)
        if labels is None:
            images = client.generate(n, seed=seed, temperature=temperature)
        else:
            images = client.generate(seed=seed, temperature=temperature, labels=labels)
    path = save_grid(images, out, columns=columns)
    log.info("wrote %d generated images to %s", len(images), path)
    return path
