"""PNG pictures of a trained VAE: samples, reconstructions, the 2-D latent space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image


def image_grid(images, cols: int, pad: int = 1) -> np.ndarray:
    """(N, H, W, C) floats in [0, 1] -> one (rows*H, cols*W[, C]) uint8 picture."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
    for i, image in enumerate(images):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[top:top + h, left:left + w] = image
    grid = (grid * 255).round().astype(np.uint8)
    return grid[..., 0] if c == 1 else grid


def save_grid(images, path: Path, cols: int, scale: int = 2) -> Path:
    picture = Image.fromarray(image_grid(images, cols))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    picture.save(path)
    return path


def sample_grid(vae, path: Path, n: int = 64, seed: int = 0) -> Path:
    """A grid of n images decoded from z ~ N(0, I)."""
    return save_grid(vae.sample(n, seed=seed), path, cols=int(np.ceil(np.sqrt(n))))


def reconstruction_grid(vae, images, path: Path, n: int = 32) -> Path:
    """Pairs of rows: test inputs above their reconstructions."""
    images = np.asarray(images[:n], np.float32)
    recon = np.asarray(vae.reconstruct(images))
    cols = 8
    rows = []
    for start in range(0, len(images), cols):
        rows += [images[start:start + cols], recon[start:start + cols]]
    return save_grid(np.concatenate(rows), path, cols=cols)


def latent_scatter(z_mean, labels, path: Path) -> Path:
    """The encoded test set in a 2-D latent space, coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    points = ax.scatter(z_mean[:, 0], z_mean[:, 1], c=labels, cmap="tab10", s=2)
    fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title("Test set, posterior means")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def manifold_grid(vae, path: Path, n: int = 20) -> Path:
    """Decodes an n x n grid of z spaced by the prior's quantiles (2-D latent only)."""
    quantiles = tf.math.ndtri(tf.linspace(0.05, 0.95, n)).numpy()
    z = np.array([[x, y] for y in quantiles[::-1] for x in quantiles], np.float32)
    return save_grid(vae.decode(z), path, cols=n, scale=1)
