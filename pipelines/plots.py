"""PNG pictures of a trained VAE: samples, reconstructions, the 2-D latent space, and for
conditional models generation by class and half completion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from serving import grid


def save_grid(images, path: Path, cols: int) -> Path:
    """The one grid writer (`serving.grid`): white 1-px padding, enlarged to be readable."""
    return grid.save_grid(images, path, columns=cols, padding=1, background=1.0)


def sample_grid(vae, path: Path, n: int = 64, seed: int = 0) -> Path:
    """A grid of n images decoded from z ~ N(0, I)."""
    return save_grid(vae.sample(n, seed=seed), path, cols=int(np.ceil(np.sqrt(n))))


def reconstruction_grid(vae, images, path: Path, n: int = 32, labels=None) -> Path:
    """Pairs of rows: test inputs above their reconstructions (given their labels, which
    a label-conditioned model needs)."""
    images = np.asarray(images[:n], np.float32)
    recon = np.asarray(vae.reconstruct(images, labels=None if labels is None else labels[:n]))
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
    return save_grid(vae.decode(z), path, cols=n)


def class_grid(vae, path: Path, per_class: int = 10, seed: int = 0) -> Path:
    """One row per class: `per_class` images generated with each label (K rows)."""
    classes = vae.num_classes
    labels = np.repeat(np.arange(classes), per_class)
    return save_grid(vae.generate(labels, seed=seed), path, cols=per_class)


def completion_grid(vae, images, path: Path, n: int = 8, seed: int = 0) -> Path:
    """One row per test image: (observed half, the other one blank | completion | truth)."""
    images = np.asarray(images[:n], np.float32)
    condition = vae.condition
    observed = np.asarray(condition.assemble(images, np.zeros((len(images), *condition.x_shape), np.float32)))
    completed = np.asarray(vae.complete(images, seed=seed))
    rows = np.stack([observed, completed, images], axis=1)  # (n, 3, H, W, C)
    return save_grid(rows.reshape(-1, *images.shape[1:]), path, cols=3)
