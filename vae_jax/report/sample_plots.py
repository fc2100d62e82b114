"""Figures of sample quality beside the likelihood: the NLL and the Fréchet distance against σ on
two axes, and the sample grid (decoder means, draws and reconstructions per member). Rows in,
PNG files out; the numbers are `vae_jax.sample_quality`'s.
"""

from __future__ import annotations

import pathlib

import numpy as np

from vae_jax.report.plots import plt
from vae_jax.report.rows import by_sigma, ok_rows


def _strip(images: np.ndarray, count: int) -> np.ndarray:
    """`count` images [N, H, W, C] uint8 side by side as one float row [H, count·W, C]."""
    return np.concatenate(list(images[:count].astype(np.float32) / 255.0), axis=1)


def plot_sample_grid(path: pathlib.Path, rows: list[dict], images: dict, count: int = 8) -> str:
    """Per member shown (`rows`, each with `_index` into `images`' first axis): its decoder
    means f(z), draws from p(x | z) at the same z (clipped to [0, 1]) and reconstructions of
    the first test images, side by side, one line per member; the test images on top."""
    panels = [("test images", images["test"])] + [(row["label"], None) for row in rows]
    fig, axes = plt.subplots(
        len(panels), 3, figsize=(3 * 0.45 * count, 0.62 * len(panels) + 0.6), squeeze=False
    )
    titles = ("decoder means f(z), z ~ N(0, I)", "draws x ~ p(x | z), same z", "reconstructions")
    for col, title in enumerate(titles):
        axes[0, col].set_title(title, fontsize=8)
    for line, (label, real) in enumerate(panels):
        for col, name in enumerate(("prior_mean", "prior_sample", "reconstruction")):
            ax = axes[line, col]
            if real is not None and col < 2:
                ax.axis("off")  # the test images sit under the reconstructions only
                continue
            if real is not None:
                shown = real
            else:
                shown = images[name][rows[line - 1]["_index"]]
            strip = _strip(shown, count)
            ax.imshow(strip[..., 0] if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    name = "sample_grid.png"
    fig.savefig(path / "plots" / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name


def plot_nll_and_fd(path: pathlib.Path, rows: list[dict], main: str) -> str:
    """Test NLL (as trained and refit) and the prior samples' Fréchet distance (decoder means
    and draws) against σ on two axes, the main group's means over seeds."""
    main_rows = [r for r in ok_rows(rows) if r["group"] == main]
    fig, nll_ax = plt.subplots(figsize=(7, 4.2))
    fd_ax = nll_ax.twinx()
    for key, style, label in (
        ("test/iwae_nll", "o-", "test NLL, as trained"),
        ("test/iwae_nll_refit", "s--", "test NLL, σ refit"),
    ):
        sig, value, _, _ = by_sigma(main_rows, key)
        if len(sig):
            nll_ax.plot(sig, value, style, color="C0", ms=4, label=label)
    for key, style, label in (
        ("test/fd_prior_mean", "^-", "Fréchet distance, decoder means"),
        ("test/fd_prior_sample", "v:", "Fréchet distance, draws from p(x|z)"),
    ):
        sig, value, _, _ = by_sigma(main_rows, key)
        if len(sig):
            fd_ax.plot(sig, value, style, color="C3", ms=4, label=label)
    nll_ax.set_xscale("log")
    nll_ax.set_yscale("symlog", linthresh=100)
    fd_ax.set_yscale("log")
    nll_ax.set_xlabel("decoder σ (pixel units)")
    nll_ax.set_ylabel("test NLL, nats per image (IWAE)", color="C0")
    fd_ax.set_ylabel("Fréchet distance to the test images (features)", color="C3")
    handles = nll_ax.get_legend_handles_labels()[0] + fd_ax.get_legend_handles_labels()[0]
    labels = nll_ax.get_legend_handles_labels()[1] + fd_ax.get_legend_handles_labels()[1]
    fig.legend(handles, labels, fontsize=7, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 0.0))
    name = "nll_and_fd.png"
    fig.savefig(path / "plots" / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name
