"""Image grids as PNG files: what `vae generate` writes."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


def image_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """Tiles (N, H, W, C) images in [0, 1] into one uint8 picture.

    Args:
        images: the images; values are clipped to [0, 1]. C is 1 (grey) or 3 (RGB).
        columns: images per row (default: a near-square grid).
        padding: pixels of black between images.

    Returns:
        (rows * (H + p) + p, columns * (W + p) + p[, 3]) uint8 array.
    """
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 1 or 3), got {images.shape}")
    count, height, width, channels = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / columns))
    grid = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), np.uint8)
    for index, image in enumerate(images):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top : top + height, left : left + width] = np.round(image * 255).astype(np.uint8)
    return grid[..., 0] if channels == 1 else grid


def save_grid(images: np.ndarray, path: str | os.PathLike, columns: int | None = None) -> Path:
    """Writes `image_grid(images)` as a PNG and returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, columns)).save(path, format="PNG")
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
) -> Path:
    """Asks a server for `n` generated images and writes them as a PNG grid.

    Args:
        target: `host:port` of TF Serving or `vae serve`.
        out: the PNG path.
        n: number of images.
        seed: the generation seed (None: random).
        temperature: scale of the latent draws.
        model_name: served model name (default: the contract's).
        timeout: deadline per request, in seconds.
        tls: `serving.client.TLSOptions`, or None for plaintext.
        wait_seconds: first wait up to this long for the server to have a version loaded.

    Returns:
        The PNG path.

    Raises:
        serving.client.ServingError: the server refused or failed the call.
        TimeoutError: no version became available within `wait_seconds`.
    """
    from serving import contract
    from serving.client import VAEClient

    with VAEClient(target, model_name or contract.MODEL_NAME, timeout, tls=tls) as client:
        if wait_seconds > 0:
            client.wait_until_ready(timeout=wait_seconds)
        images = client.generate(n, seed=seed, temperature=temperature)
    path = save_grid(images, out)
    log.info("wrote %d generated images to %s", len(images), path)
    return path
