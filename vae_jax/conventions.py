"""A loss convention ("mean MSE + w·KL") → the σ of the Gaussian decoder whose ELBO it scales.

A Gaussian decoder p(x|z) = N(f(z), σ²I) on D-dimensional data has the per-example negative ELBO

    −ELBO = ‖x − f(z)‖² / (2σ²) + KL + (D/2)·log(2πσ²).

A loss of the shape people write, for a batch of B examples with squared errors SE_b = ‖x_b − f‖²
measured in the units of the data inside the loss (pixels of width r = `data_range`),

    loss = a · R_batch( SE_b / D^m ) + c · K_batch( KL_b ),

with a = `recon_weight`, c = `kl_weight`, m = 1 for `recon="mean"` (0 for "sum"), and each batch
reduction R, K a sum or a mean (a factor 1 or 1/B), is linear in the per-example terms. On [0, 1]
pixels SE_b = r²·SE_b^pixel, so with ρ = 1/B for a mean and 1 for a sum

    loss = (c·ρ_K) · Σ_b [ (a·r²·ρ_R) / (c·ρ_K·D^m) · SE_b^pixel + KL_b ].

The bracket is the negative ELBO without its normaliser exactly when its weight is 1/(2σ²):

    σ² = c · ρ_K · D^m / (2 · a · r² · ρ_R),    σ in [0, 1] pixel units (σ_data = r·σ).

Summed MSE + KL gives σ² = 1/2; MSE averaged over pixels + KL gives σ² = D/2; the batch size
enters only when the two terms are reduced differently over the batch. The same loss is a β-VAE
with a unit-variance decoder, ‖x − f‖²/2 + β·KL, at β = σ² (multiply the bracket by σ²).

`KNOWN_CONVENTIONS` records what widely used VAE code computes, as read from its source
(docs/conventions.md quotes the lines). Everything here is a pure function of numbers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

BATCH_REDUCTIONS = ("mean", "sum")
RECON_REDUCTIONS = ("sum", "mean")


def _positive_int(value: Any, name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer: {what}")
    return value


def _positive_number(value: Any, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r} must be a number > 0: {what}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a finite number > 0: {what}")
    return float(value)


def _one_of(value: Any, name: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        choices = " or ".join(repr(a) for a in allowed)
        raise ValueError(f"{name}={value!r} is not known; pass {choices} ({what})")
    return value


def _loss_weights(
    num_dims: int,
    recon: str,
    recon_weight: float,
    kl_weight: float,
    recon_batch: str,
    kl_batch: str,
    batch_size: int,
    data_range: float,
) -> tuple[float, float]:
    """(weight on Σ_b SE_b^pixel, weight on Σ_b KL_b) in the loss, after checking every input."""
    _positive_int(num_dims, "num_dims", "the dimensions of one example (784 for 28×28 MNIST)")
    _one_of(recon, "recon", RECON_REDUCTIONS, "squared error summed or averaged over dimensions")
    _one_of(recon_batch, "recon_batch", BATCH_REDUCTIONS, "how the batch reduces the recon term")
    _one_of(kl_batch, "kl_batch", BATCH_REDUCTIONS, "how the batch reduces the KL term")
    _positive_int(batch_size, "batch_size", "the examples per batch the loss is reduced over")
    recon_weight = _positive_number(recon_weight, "recon_weight", "the reconstruction weight")
    kl_weight = _positive_number(kl_weight, "kl_weight", "the KL weight (β)")
    data_range = _positive_number(
        data_range,
        "data_range",
        "the data's interval width in the loss: 1 for [0, 1], 2 for [-1, 1], 255 for [0, 255]",
    )
    per_dim = num_dims if recon == "mean" else 1
    recon_rho = 1.0 / batch_size if recon_batch == "mean" else 1.0
    kl_rho = 1.0 / batch_size if kl_batch == "mean" else 1.0
    return recon_weight * data_range**2 * recon_rho / per_dim, kl_weight * kl_rho


def implied_sigma(
    num_dims: int,
    *,
    recon: str = "sum",
    recon_weight: float = 1.0,
    kl_weight: float = 1.0,
    recon_batch: str = "mean",
    kl_batch: str = "mean",
    batch_size: int = 1,
    data_range: float = 1.0,
) -> float:
    """σ of the Gaussian decoder whose negative ELBO the loss is a positive multiple of.

        σ² = kl_weight · ρ_K · D^m / (2 · recon_weight · data_range² · ρ_R)

    (module docstring: m = 1 for recon="mean"; ρ = 1/batch_size for a batch mean, 1 for a sum).

    Args:
      num_dims: D, the dimensions of one example (pixels × channels).
      recon: "sum" or "mean": each example's squared error summed or averaged over its D dims.
      recon_weight: the weight on the reconstruction term, > 0.
      kl_weight: the weight on the KL term, > 0 (β, PyTorch-VAE's kld_weight, …).
      recon_batch, kl_batch: "mean" or "sum": how each term is reduced over the batch.
      batch_size: B, the examples per batch (matters only when the two reductions differ).
      data_range: width of the data's interval inside the loss (1 for [0, 1], 2 for [−1, 1],
        255 for [0, 255]).

    Returns:
      σ in this project's pixel units (data scaled to [0, 1]).

    Raises:
      ValueError: an unknown reduction or a non-positive size, weight or range; the message
        names the argument and what to pass.
    """
    recon_scale, kl_scale = _loss_weights(
        num_dims, recon, recon_weight, kl_weight, recon_batch, kl_batch, batch_size, data_range
    )
    return math.sqrt(kl_scale / (2.0 * recon_scale))


class Elbo(NamedTuple):
    """An ELBO of a Gaussian decoder on [0, 1] pixels, read off a reported loss."""

    nats: float  # ELBO per example, normaliser −(D/2)·log 2πσ² included; higher is better
    bits_per_dim: float  # −ELBO on the 8-bit scale (metrics.bits_per_dim): an upper bound
    sigma: float  # the implied σ the ELBO is of


def loss_to_elbo(
    loss_value: float,
    num_dims: int,
    *,
    recon: str = "sum",
    recon_weight: float = 1.0,
    kl_weight: float = 1.0,
    recon_batch: str = "mean",
    kl_batch: str = "mean",
    batch_size: int = 1,
    data_range: float = 1.0,
    num_bins: int = 256,
) -> Elbo:
    """The ELBO per example that a reported loss value stands for, under its convention.

    `loss_value` is the loss of ONE batch of `batch_size` examples exactly as the convention
    computes it (the recon term reduced over the batch plus the weighted KL term reduced over the
    batch, nothing else added), e.g. the training loop's printed per-batch loss; an average of
    such values over batches of equal size (an epoch's mean) works the same. With a single
    posterior sample per example it is an unbiased estimate, so the ELBO returned is too. From
    the module docstring, loss = (c·ρ_K)·B · mean_b[SE_b^pixel/(2σ²) + KL_b], hence

        ELBO = −loss / (c·ρ_K·B) − (D/2)·log(2πσ²)     (nats per example, [0, 1] pixels).

    Besides the convention it needs nothing but D; bits/dim on the 8-bit scale assume the loss
    was computed on dequantised pixels, x = (k + u)/num_bins (metrics.bits_per_dim).

    Args:
      loss_value: the reported loss, a finite number.
      num_dims … data_range: the convention, as for `implied_sigma`.
      num_bins: pixel levels of the data (256 for 8-bit images).

    Returns:
      Elbo(nats, bits_per_dim, sigma).
    """
    if isinstance(loss_value, bool) or not isinstance(loss_value, int | float):
        raise ValueError(f"loss_value={loss_value!r} must be a number: the reported loss")
    if not math.isfinite(loss_value):
        raise ValueError(f"loss_value={loss_value!r} must be finite: the reported loss")
    _positive_int(num_bins, "num_bins", "the pixel levels of the data (256 for 8-bit images)")
    recon_scale, kl_scale = _loss_weights(
        num_dims, recon, recon_weight, kl_weight, recon_batch, kl_batch, batch_size, data_range
    )
    sigma = math.sqrt(kl_scale / (2.0 * recon_scale))
    elbo = -loss_value / (kl_scale * batch_size) - 0.5 * num_dims * math.log(
        2.0 * math.pi * sigma**2
    )
    # Imported here so that σ alone (and the CLI's flag errors) need no jax, which metrics loads.
    from vae_jax import metrics

    bpd = float(metrics.bits_per_dim(-elbo, num_dims, num_bins=num_bins))
    return Elbo(nats=elbo, bits_per_dim=bpd, sigma=sigma)


@dataclasses.dataclass(frozen=True)
class Convention:
    """What one widely used VAE code base computes, as read from its source."""

    name: str  # a short key, e.g. for experiments/implied_sigma.py --convention
    label: str  # how a report names it
    repo: str  # GitHub owner/name
    paths: tuple[str, ...]  # the files that define the loss and its defaults
    commit: str  # the commit paths[0], which defines the loss, was read at
    likelihood: str  # "gaussian" (an MSE) or "bernoulli" (a BCE: no σ)
    # implied_sigma's keyword arguments, batch_size = the code's default; empty for Bernoulli.
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


KNOWN_CONVENTIONS: tuple[Convention, ...] = (
    Convention(
        name="pythae",
        label="pythae VAE, reconstruction_loss='mse'",
        repo="clementchadebec/benchmark_VAE",
        paths=(
            "src/pythae/models/vae/vae_model.py",
            "src/pythae/trainers/base_trainer/base_training_config.py",
        ),
        commit="24939dc75842dfaf8f7dad77fbf27f65337f0817",
        likelihood="gaussian",
        kwargs=dict(
            recon="sum", recon_weight=0.5, recon_batch="mean", kl_batch="mean", batch_size=64
        ),
    ),
    Convention(
        name="disentanglement_lib",
        label="disentanglement_lib l2_loss, vae.beta = 1",
        repo="google-research/disentanglement_lib",
        paths=(
            "disentanglement_lib/methods/shared/losses.py",
            "disentanglement_lib/methods/unsupervised/vae.py",
            "disentanglement_lib/config/unsupervised_study_v1/model_configs/shared.gin",
        ),
        commit="76f41e39cdeff8517f7fba9d57b09f35703efca9",
        likelihood="gaussian",
        kwargs=dict(recon="sum", kl_weight=1.0, recon_batch="mean", kl_batch="mean", batch_size=64),
    ),
    Convention(
        name="pytorch_vae",
        label="PyTorch-VAE VanillaVAE, mean MSE + kld_weight 0.00025",
        repo="AntixK/PyTorch-VAE",
        paths=("models/vanilla_vae.py", "experiment.py", "configs/vae.yaml", "dataset.py"),
        commit="8bf7be5c83c35a2027aa1771e6f0fb1ad9425536",
        likelihood="gaussian",
        kwargs=dict(
            recon="mean", kl_weight=0.00025, recon_batch="mean", kl_batch="mean", batch_size=64
        ),
    ),
    Convention(
        name="sigma_vae_mse",
        label="sigma-vae-pytorch --model=mse_vae",
        repo="orybkin/sigma-vae-pytorch",
        paths=("model.py", "train_vae.py"),
        commit="8873c561beb511e4ffa5efa46d7c017b6d8c50af",
        likelihood="gaussian",
        kwargs=dict(recon="mean", recon_batch="mean", kl_batch="sum", batch_size=128),
    ),
    Convention(
        name="pytorch_examples",
        label="pytorch/examples vae/main.py (BCE)",
        repo="pytorch/examples",
        paths=("vae/main.py",),
        commit="cd01f93000a6679e768700dd29e417a1e5fd10e5",
        likelihood="bernoulli",
    ),
    Convention(
        name="keras",
        label="Keras VAE example (BCE)",
        repo="keras-team/keras-io",
        paths=("examples/generative/vae.py",),
        commit="cca4efba8e0b8514ae3817931696294039b3bfc9",
        likelihood="bernoulli",
    ),
    Convention(
        name="flax",
        label="flax examples/vae (BCE)",
        repo="google/flax",
        paths=("examples/vae/train.py",),
        commit="b60f7f45b90f8fc42a88b1639c9cc88a40b298d3",
        likelihood="bernoulli",
    ),
)


def get_convention(name: str) -> Convention:
    """The known convention called `name`; ValueError listing the names otherwise."""
    for convention in KNOWN_CONVENTIONS:
        if convention.name == name:
            return convention
    names = ", ".join(c.name for c in KNOWN_CONVENTIONS)
    raise ValueError(f"convention={name!r} is not known; pass one of {names}")


def convention_sigma(
    convention: Convention, num_dims: int, *, batch_size: int | None = None
) -> float | None:
    """σ a known convention implies for D = `num_dims` (None for a Bernoulli one).

    `batch_size=None` uses the code's default batch size; give one to ask what that code
    implies at another.
    """
    if convention.likelihood != "gaussian":
        return None
    kwargs = dict(convention.kwargs)
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    return implied_sigma(num_dims, **kwargs)


def marked_sigmas(num_dims: int, *, batch_size: int | None = None) -> list[tuple[str, float]]:
    """(label, σ) of every Gaussian known convention, ascending in σ, for a sweep's σ axis.

    `batch_size` as for `convention_sigma`.
    """
    marks = [
        (convention.label, convention_sigma(convention, num_dims, batch_size=batch_size))
        for convention in KNOWN_CONVENTIONS
        if convention.likelihood == "gaussian"
    ]
    return sorted(marks, key=lambda mark: mark[1])
