"""Figures written into a workdir's plots/ (matplotlib, Agg backend; no display needed), drawn
from the workdir's files alone: rows of results.csv, figures.npz, samples.npz, metrics.jsonl.
No model runs here (what a figure needs from one, `vae_jax.figure_data` stored)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from vae_jax import conventions, figure_data, likelihoods  # noqa: E402
from vae_jax.likelihoods import implicit_sigmas  # noqa: E402
from vae_jax.report.rows import by_sigma, group_mean, ok_rows  # noqa: E402


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


def single_run_plots(path: pathlib.Path) -> None:
    """plots/ of a single run from its figures.npz (`figure_data.write_single_run`) and
    metrics.jsonl: reconstructions.png and samples.png (images only), kl_per_latent.png,
    training_curves.png."""
    plots = path / "plots"
    plots.mkdir(exist_ok=True)
    with np.load(path / figure_data.FILE) as f:
        stored = {k: f[k] for k in f.files}
    if "test" in stored:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3))
        _show(axes[0], image_grid(stored["test"], 8), "test data")
        _show(
            axes[1], image_grid(stored["reconstruction"], 8), "reconstructions (mean of p(x|E_q z))"
        )
        fig.savefig(plots / "reconstructions.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(5, 3))
        std = stored["decoder_std"]
        std = f", decoder std {std:.3g}" if np.isfinite(std) else ""
        _show(ax, image_grid(stored["prior_mean"], 8), f"samples: mean of p(x|z), z ~ N(0, I){std}")
        fig.savefig(plots / "samples.png", dpi=100, bbox_inches="tight")
        plt.close(fig)

    kl = stored["kl_per_latent"]
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
            ax.plot(steps, [r[key] for r in lines], label="train (mean over each chunk)")
            ax.plot(steps[-1], stored[f"test_{key}"], "r*", ms=10, label="test, at the end")
            ax.set_xlabel("step")
            ax.set_title(f"{key} (nats / example)", fontsize=9)
        axes[0].legend(fontsize=7)
        fig.savefig(plots / "training_curves.png", dpi=100, bbox_inches="tight")
        plt.close(fig)


SWEEP_PLOTS = (
    ("test/iwae_nll", "test NLL (IWAE, nats / example)"),
    ("test/elbo", "test ELBO (nats / example)"),
    ("test/bits_per_dim", "bits / dim"),
    ("test/recon_mse", "reconstruction MSE (per pixel)"),
    ("test/kl", "KL (nats / example)"),
    ("test/active_units", "active units"),
    ("test/collapsed_fraction", "collapsed fraction (mean KL < 0.01 nats)"),
)
# Keys that also have a refit score (σ refitted on the validation data), drawn dashed beside them.
REFIT_KEYS = ("test/iwae_nll", "test/elbo", "test/bits_per_dim")
# One colour per family everywhere (the main fixed-σ group is C0).
FAMILY_COLORS = {name: f"C{i}" for i, name in enumerate(likelihoods.LIKELIHOODS)}
LINESTYLES = ("--", "-.", ":", (0, (5, 1, 1, 1)), (0, (1, 1)), (0, (3, 1, 1, 1, 1, 1)))


LIKELIHOOD_KEYS = ("test/iwae_nll", "test/elbo", "test/bits_per_dim")


def comparable(data_model: str, key: str) -> bool:
    """Whether a family's likelihood `key` may be drawn beside the main Gaussian's: only a density
    on the same dequantised pixels (`Likelihood.data_model` 'continuous'); a probability over pixel
    values or of binarised pixels is about other data, in nats and in bits/dim."""
    return data_model == "continuous" or key not in LIKELIHOOD_KEYS


def _readable_axes(ax, key: str) -> None:
    """Log σ axis; y axes whose tick labels can be read: plain numbers on log and symlog axes."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    if key in ("test/iwae_nll", "test/elbo"):
        ax.set_yscale("symlog", linthresh=1000)  # small σ costs tens of thousands of nats
        # Ticks at 0, ±500 and ±(1, 3)·10^n ≥ 1000 only, so no two labels crowd each other.
        lo, hi = ax.get_ylim()
        magnitudes = [500] + [m * 10**n for n in range(3, 9) for m in (1, 3)]
        ticks = [0] + [s * m for m in magnitudes for s in (-1, 1) if lo <= s * m <= hi]
        ax.yaxis.set_major_locator(ticker.FixedLocator(sorted(ticks)))
        ax.yaxis.set_minor_locator(ticker.NullLocator())
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    elif key in ("test/bits_per_dim", "test/recon_mse"):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def _draw_sigma_panel(ax, rows: list[dict], main: str, key: str, num_dims: int, references):
    """The main group's `key` against σ (as trained, and refit where it exists), the other
    families as labelled horizontal lines, the σ of summed and mean MSE + KL as vertical lines."""
    main_rows = [r for r in ok_rows(rows) if r["group"] == main]
    seeds = len({r["seed"] for r in main_rows})
    sig, mean, lo, hi = by_sigma(main_rows, key)
    ax.plot(sig, mean, "o-", color="C0", label=f"{main}, fixed σ, as trained")
    if seeds > 1:
        ax.fill_between(sig, lo, hi, color="C0", alpha=0.25, label=f"min–max over {seeds} seeds")
    if key in REFIT_KEYS:
        rsig, rmean, _, _ = by_sigma(main_rows, key + "_refit")
        if len(rsig):
            ax.plot(rsig, rmean, "s--", color="C0", alpha=0.6, ms=4, label=f"{main}, σ refit")
    for i, group in enumerate(references):
        data_model = next(r["data_model"] for r in rows if r["group"] == group)
        if not comparable(data_model, key):
            continue  # about other data than the Gaussian's density
        value = group_mean(rows, group, key)
        if value is not None and np.isfinite(value):
            ax.axhline(
                value,
                color=FAMILY_COLORS[group],
                ls=LINESTYLES[i % len(LINESTYLES)],
                lw=1.2,
                label=f"{group} ({value:.3g})",
            )
    for j, (name, s) in enumerate(implicit_sigmas(num_dims).items()):
        ax.axvline(s, color="k", ls=":" if j == 0 else "-.", lw=1, label=name)
    lo, hi = (min(sig) / 1.5, max(sig) * 1.5) if len(sig) else (0.0, 0.0)
    for label, s in conventions.marked_sigmas(num_dims):
        if lo < s < hi and not any(
            abs(s - v) / v < 0.01 for v in implicit_sigmas(num_dims).values()
        ):
            ax.axvline(s, color="0.55", ls=(0, (2, 2)), lw=1, label=f"{label}: σ = {s:.3g}")
            ax.text(
                s,
                0.98,
                label.split(",")[0].split(" ")[0],
                transform=ax.get_xaxis_transform(),
                rotation=90,
                fontsize=6,
                va="top",
                ha="right",
                color="0.35",
            )
    _readable_axes(ax, key)


def plot_against_sigma(path: pathlib.Path, rows: list[dict], main: str, num_dims: int) -> list[str]:
    """One PNG per metric against σ (log axis), reference groups as horizontal lines."""
    plots = path / "plots"
    plots.mkdir(exist_ok=True)
    references = sorted({r["group"] for r in ok_rows(rows)} - {main})
    names = []
    for key, label in SWEEP_PLOTS:
        if not any(r.get(key) is not None for r in ok_rows(rows) if r["group"] == main):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw_sigma_panel(ax, rows, main, key, num_dims, references)
        ax.set_xlabel("decoder σ (pixel units)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        name = "sigma_" + key.split("/")[-1] + ".png"
        fig.savefig(plots / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        names.append(name)
    return names


def one_fitted_scale(group: str, main: str) -> bool:
    """Whether family `group` is the main family's shape (`Likelihood.scale_power`) with ONE
    scale that training learns or sets optimally: its σ is a point on the main group's σ axis."""
    family, main_family = likelihoods.get_likelihood(group), likelihoods.get_likelihood(main)
    single = family.shared_learned_scale or family.optimal_scale
    return group != main and single and family.scale_power == main_family.scale_power


def plot_summary(path: pathlib.Path, rows: list[dict], main: str, num_dims: int) -> str:
    """One figure for the README: bits/dim, active units and reconstruction MSE against σ."""
    panels = (
        ("test/bits_per_dim", "test bits / dim (IWAE)"),
        ("test/active_units", "active latent units"),
        ("test/recon_mse", "reconstruction MSE per pixel"),
    )
    shown = [g for g in dict.fromkeys(r["group"] for r in rows) if one_fitted_scale(g, main)]
    shown = [g for g in shown if group_mean(rows, g, "sigma")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, (key, label) in zip(axes, panels, strict=True):
        _draw_sigma_panel(ax, rows, main, key, num_dims, shown)
        ax.set_xlabel("decoder σ (pixel units)")
        ax.set_title(label, fontsize=10)
    # One legend for the three panels: every curve any panel draws (the refit curve is only on
    # the first), a family's line without the value it has in one panel.
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(
                text.split(" (")[0] if text.startswith(tuple(shown)) else text, handle
            )
    axes[-1].legend(
        list(entries.values()),
        list(entries),
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    name = "sigma_summary.png"
    fig.savefig(path / "plots" / name, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return name


def plot_member_images(
    path: pathlib.Path, rows: list[dict], main: str, images: dict, num_columns: int = 4
) -> str | None:
    """Reconstructions and decoder means f(z), z ~ N(0, I), of a few σ of the main group (first
    seed), read from `images` in samples.npz's layout (uint8 `reconstruction`, `prior_mean`
    [rows, N, ...] indexed by a row's `_index`, `test` [N, ...]); None without images."""
    if "test" not in images:
        return None
    main_rows = [r for r in ok_rows(rows) if r["group"] == main]
    unique = sorted({r["sigma"] for r in main_rows})
    if not unique:
        return None
    chosen = [
        unique[int(i)] for i in np.linspace(0, len(unique) - 1, min(num_columns, len(unique)))
    ]
    fig, axes = plt.subplots(2, len(chosen) + 1, figsize=(2.6 * (len(chosen) + 1), 5.5))
    _show(axes[0, 0], image_grid(_as_float(images["test"][:8]), 2), "test data")
    axes[1, 0].axis("off")
    for col, sigma in enumerate(chosen, start=1):
        i = next(r["_index"] for r in main_rows if r["sigma"] == sigma)
        recon = _as_float(images["reconstruction"][i, :8])
        samples = _as_float(images["prior_mean"][i, :8])
        _show(axes[0, col], image_grid(recon, 2), f"reconstructions σ={sigma:.3g}")
        _show(axes[1, col], image_grid(samples, 2), f"samples σ={sigma:.3g}")
    name = "sigma_images.png"
    fig.savefig(path / "plots" / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name


def _as_float(images: np.ndarray) -> np.ndarray:
    """uint8 images (samples.npz) as float32 in [0, 1]."""
    return images.astype(np.float32) / 255.0


def plot_spectrum(path: pathlib.Path, eigvals: np.ndarray, theory: list[dict], latent_dim: int):
    """The data spectrum with each member's σ² drawn across it and its collapsed latents marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown = min(len(eigvals), 3 * latent_dim)
    ranks = np.arange(1, shown + 1)
    ax.semilogy(ranks, eigvals[:shown], "ko-", ms=4, label="eigenvalues λ_i of the data covariance")
    ax.axvline(latent_dim + 0.5, color="gray", lw=1, ls=":", label=f"latent size k = {latent_dim}")
    for j, t in enumerate(sorted(theory, key=lambda t: -t["sigma_sq"])):
        color = f"C{j % 10}"
        ax.axhline(t["sigma_sq"], color=color, lw=1, ls="--")
        marks = t["collapsed_latents"]
        if marks:
            ax.plot(marks, [t["sigma_sq"]] * len(marks), "x", color=color, ms=8)
        label = f"σ²={t['sigma_sq']:.3g} ({t['group']})"
        ax.text(shown + 0.4, t["sigma_sq"], label, color=color, fontsize=6, ha="right")
    values = np.concatenate([eigvals[:shown], [t["sigma_sq"] for t in theory]])
    values = values[values > 0]
    ax.set_ylim(values.min() / 2, values.max() * 2)
    ax.set_xlim(0.5, shown + 0.5)
    ax.set_xlabel("rank i (× marks the trained model's collapsed latents on its σ² line)")
    ax.set_ylabel("variance")
    ax.legend(fontsize=7, loc="lower left")
    name = "linear_spectrum.png"
    fig.savefig(path / "plots" / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name


def plot_rate_distortion(path: pathlib.Path, rows: list[dict], curve: dict[str, Any]) -> str:
    """Each member as a point on the rate (KL) – distortion plane, with the linear theory's curve.

    rows: dicts with 'sigma', 'test/kl' (nats) and 'test/recon_mse' (per-pixel MSE of the
    reconstruction decoded from the posterior mean; per example it is D·mse).
    curve: figures.npz's `eigenvalues` and `rd_*` arrays (`vae_jax.figure_data`) — the optimal
    linear VAE for this data as σ² sweeps the spectrum: rate, the ELBO's distortion
    E_q‖x − Wz − μ‖² (solid) and the posterior-mean reconstruction's ‖x − W E_q[z] − μ‖²
    (dashed, what the points measure); the σ² = 1/2 (summed MSE + KL) and σ² = D/2 (mean
    MSE + KL) points are marked on it.
    """
    num_dims = len(curve["eigenvalues"])
    sigma_sq = np.asarray(curve["rd_sigma_sq"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(
        curve["rd_distortion"],
        curve["rd_rate"],
        "k-",
        lw=1.5,
        label="optimal linear VAE: E_q‖x − Wz − μ‖²",
    )
    ax.plot(
        curve["rd_distortion_at_mean"],
        curve["rd_rate"],
        "k--",
        lw=1,
        label="optimal linear VAE: ‖x − W E_q z − μ‖² (the points' measure)",
    )
    log_sigma_sq = np.log(sigma_sq)
    for j, (name, s) in enumerate(implicit_sigmas(num_dims).items()):
        # The curve's ends hold for any σ² beyond them: all latents active below, none above.
        at = np.clip(np.log(s**2), log_sigma_sq[0], log_sigma_sq[-1])
        point = [np.interp(at, log_sigma_sq, curve[key]) for key in ("rd_distortion", "rd_rate")]
        ax.plot(*point, "s" if j == 0 else "D", color="k", mfc="none", ms=9, label=name)
    keys = ("sigma", "test/kl", "test/recon_mse")
    points = [r for r in rows if all(r.get(key) is not None for key in keys)]
    if points:
        sigmas = np.array([r["sigma"] for r in points])
        scatter = ax.scatter(
            [num_dims * r["test/recon_mse"] for r in points],
            [r["test/kl"] for r in points],
            c=np.log10(sigmas),
            cmap="viridis",
            zorder=3,
            label="trained members (test data)",
        )
        fig.colorbar(scatter, ax=ax, label="log10 σ")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    # Every point whole inside the axes: members at zero rate on the axis, the largest rate and
    # the smallest distortion clear of the edges.
    rates = [r["test/kl"] for r in points] + list(curve["rd_rate"])
    distortions = [num_dims * r["test/recon_mse"] for r in points] + list(
        curve["rd_distortion_at_mean"]
    )
    ax.set_ylim(-0.1, 1.6 * max(rates))
    ax.set_xlim(0.9 * min(distortions), 1.1 * max(distortions + list(curve["rd_distortion"])))
    ax.set_xlabel("distortion: squared error per example")
    ax.set_ylabel("rate: KL (nats per example)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)  # off the points
    name = "rate_distortion.png"
    fig.savefig(path / "plots" / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name


REMEDY_COLORS = {
    name: f"C{i}"
    for i, name in enumerate(
        ("none", "kl_warmup", "free_bits", "geco", "learned_sigma", "per_pixel_sigma")
    )
}


def remedy_curves(path: pathlib.Path, rows: list[dict]) -> dict[tuple, dict[str, np.ndarray]]:
    """(remedy, σ at start) -> steps and the seeds' mean per-chunk KL, σ and (fixed σ) MSE, read
    from each group's metrics.jsonl (a list per member, in the group's row order)."""
    members: dict[tuple, list[tuple[list[dict], int]]] = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        text = (path / "groups" / group / "metrics.jsonl").read_text()
        lines = [json.loads(s) for s in text.splitlines() if s]
        for i, r in enumerate(r for r in rows if r["group"] == group):
            if lines and r["status"] == "ok":
                members.setdefault((r["remedy"], r["sigma_start"]), []).append((lines, i))
    curves = {}
    for key, entries in members.items():
        lines = entries[0][0]
        curve = {"step": np.array([line["step"] for line in lines])}
        for name in ("kl", "sigma", "mse"):
            if name in lines[0]:
                curve[name] = np.mean([[ln[name][i] for ln in ls] for ls, i in entries], axis=0)
        curves[key] = curve
    return curves


def plot_remedy_curves(path: pathlib.Path, rows: list[dict]) -> str:
    """KL and the σ the reconstruction is weighted with (GECO's σ(λ) = √(D/2λ), a learned σ)
    against training step, mean over seeds: one line per remedy and σ at the start."""
    curves = remedy_curves(path, rows)
    starts = sorted({s for _, s in curves if s is not None})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for (remedy, start), curve in curves.items():
        style = LINESTYLES[starts.index(start) % len(LINESTYLES)] if start in starts else "-"
        label = remedy if start is None else f"{remedy}, σ at start {start:.3g}"
        color = REMEDY_COLORS.get(remedy, "k")
        axes[0].plot(curve["step"], curve["kl"], color=color, ls=style, label=label)
        if "sigma" in curve and not np.allclose(curve["sigma"], curve["sigma"][0]):
            axes[1].plot(curve["step"], curve["sigma"], color=color, ls=style, label=label)
    for start in starts:
        axes[1].axhline(start, color="0.6", lw=0.8, ls=":")
    axes[0].set_ylabel("KL (nats / example, training batches)")
    axes[1].set_ylabel("σ the reconstruction is weighted with")
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    for ax in axes:
        ax.set_xlabel("training step")
    axes[0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(2.25, 1.0))
    axes[1].set_title("dotted: the fixed σ the members start from", fontsize=8)
    name = "remedy_curves.png"
    fig.savefig(path / "plots" / name, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return name
