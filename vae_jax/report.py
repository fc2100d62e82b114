"""Figures and reports written into a workdir (matplotlib, Agg backend; no display needed)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vae_jax import models  # noqa: E402


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """[N, H, W, C] -> one [rows·H, columns·W, C] image (C = 1 or 3), values clipped to [0, 1]."""
    images = np.clip(np.asarray(images), 0.0, 1.0)
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * h, columns * w, c), images.dtype)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = image
    return grid


def _show(ax, grid: np.ndarray, title: str) -> None:
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def reconstructions_and_samples(
    model: models.VAE, likelihood, params: Any, log_sigma: jax.Array, x: np.ndarray, rng: jax.Array
) -> tuple[np.ndarray, np.ndarray]:
    """Likelihood means of decode(E_q[z|x]) for `x`, and of decode(z), z ~ N(0, I)."""

    def recon(x):
        mean, _ = model.apply(params, x, method=models.VAE.encode)
        return likelihood.mean(model.apply(params, mean, method=models.VAE.decode), log_sigma)

    def sample(z):
        return likelihood.mean(model.apply(params, z, method=models.VAE.decode), log_sigma)

    z = jax.random.normal(rng, (len(x), model.latent_dim))
    return np.asarray(jax.vmap(recon)(jnp.asarray(x))), np.asarray(jax.vmap(sample)(z))


def single_run_plots(
    path: pathlib.Path, problem, params: Any, hyper, per_example: dict[str, np.ndarray], rng
) -> None:
    """plots/: reconstructions.png, samples.png, kl_per_latent.png, training_curves.png."""
    from vae_jax import train

    plots = path / "plots"
    plots.mkdir(exist_ok=True)
    log_sigma = train.observation_log_sigma(problem, params, hyper)
    x = problem.test_x[:32]
    images = x.ndim == 4 and x.shape[1] > 1 and x.shape[2] > 1
    if images:
        recon, samples = reconstructions_and_samples(
            problem.model, problem.likelihood, params, log_sigma, x, rng
        )
        fig, axes = plt.subplots(1, 2, figsize=(10, 3))
        _show(axes[0], image_grid(x, 8), "test data")
        _show(axes[1], image_grid(recon, 8), "reconstructions (mean of p(x|E_q z))")
        fig.savefig(plots / "reconstructions.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(5, 3))
        _show(ax, image_grid(samples, 8), "samples: mean of p(x|z), z ~ N(0, I)")
        fig.savefig(plots / "samples.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

    kl = np.mean(per_example["kl_per_latent"], axis=0)
    fig, ax = plt.subplots(figsize=(6, 3))
    order = np.argsort(-kl)
    ax.bar(np.arange(len(kl)), kl[order])
    ax.axhline(0.01, color="k", ls=":", lw=1, label="collapse threshold ε = 0.01")
    ax.set_yscale("log")
    ax.set_xlabel("latent (sorted by KL)")
    ax.set_ylabel("mean KL (nats)")
    ax.legend()
    fig.savefig(plots / "kl_per_latent.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    lines = [json.loads(s) for s in (path / "metrics.jsonl").read_text().splitlines() if s]
    if lines:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3))
        steps = [r["step"] for r in lines]
        for ax, key in zip(axes, ("elbo", "recon", "kl"), strict=True):
            ax.plot(steps, [r[key] for r in lines])
            ax.set_xlabel("step")
            ax.set_title(f"train {key} (nats / example)", fontsize=9)
        fig.savefig(plots / "training_curves.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
