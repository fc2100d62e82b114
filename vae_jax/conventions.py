"""A loss convention ("mean MSE + w·KL") → the decoder likelihood, scale and β it is the ELBO of.

A loss of the shape people write, for a batch of B examples, D dimensions and k latents each,

    loss = a · R_batch( E_b / D^m ) + c · K_batch( KL_b / k^n ),

with a = `recon_weight`, c = `kl_weight`, m = 1 for `recon="mean"` (0 for "sum"), n = 1 for
`kl="mean"` (the KL averaged over latents; 0 for "sum"), each batch reduction R, K a sum or a mean
(ρ = 1 or 1/B), and E_b the example's error in the units of the data inside the loss (pixels of
width r = `data_range`): squared (`error="squared"`, E_b = r²·‖x_b − f‖²), absolute
(`error="absolute"`, E_b = r·‖x_b − f‖₁) or binary cross-entropy (`error="bce"`, data in [0, 1]),
each on [0, 1] pixels. The loss is linear in the per-example terms:

    loss = (c·ρ_K / k^n) · Σ_b [ w · E_b^pixel + KL_b ],   w = a·r^p·ρ_R·k^n / (c·ρ_K·D^m),

p = 2, 1, 0. The bracket is the negative ELBO without its normaliser exactly when w · E_b^pixel
is the decoder's −log p(x|z) up to a constant in z:
- squared: −log N(x; f, σ²I) = ‖x − f‖²/(2σ²) + (D/2)·log 2πσ²   ⇒  σ² = 1/(2w);
- absolute: −log Laplace(x; f, b) = ‖x − f‖₁/b + D·log 2b        ⇒  b = 1/w (std √2·b);
- bce: −log Bernoulli(x; f) = BCE(x, f), no scale to absorb w     ⇒  the ELBO only when w = 1.
Summed MSE + KL gives σ² = 1/2; MSE averaged over pixels + KL gives σ² = D/2; the batch size
enters only when the two terms are reduced differently over the batch. The same loss is a β-VAE
with a unit-scale decoder (‖x − f‖²/2, ‖x − f‖₁ or BCE, + β·KL) at β = 1/(2w), 1/w, 1/w: σ², b,
and for a BCE the β that must be 1.

Free bits (Kingma et al. 2016) charge max(λ, KL_j) for latent j: while a latent's KL is below λ
the loss is not the ELBO. It is never below it (max(λ, KL_j) ≥ KL_j) and at most k·λ nats per
example above it, and it leaves w, hence σ, as it is.

The latent-diffusion autoencoder (CompVis/latent-diffusion `LPIPSWithDiscriminator`) weighs an L1
term by e^{−s}, s its learned scalar `logvar`, and adds s per element: Σ_d |x_d − f_d|/e^s + D·s
is −log Laplace(x; f, b = e^s) − D·log 2, so with `recon_weight` = e^{−s} it is the convention
above, and against its own Laplace it is a β-VAE with β = `kl_weight` (docs/conventions.md).

`KNOWN_CONVENTIONS` records what widely used VAE code computes, as read from its source
(docs/conventions.md quotes the lines). Everything here is a pure function of numbers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

BATCH_REDUCTIONS = ("mean", "sum")
RECON_REDUCTIONS = ("sum", "mean")
LATENT_REDUCTIONS = ("sum", "mean")
ERRORS = ("squared", "absolute", "bce")
# The decoder family whose negative log-likelihood each error is, and the power of the data
# range inside it (E_b = r^p · E_b^pixel).
FAMILIES = {"squared": "gaussian", "absolute": "laplace", "bce": "bernoulli"}
_RANGE_POWER = {"squared": 2, "absolute": 1, "bce": 0}


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
    *,
    error: str = "squared",
    recon: str = "sum",
    recon_weight: float = 1.0,
    kl: str = "sum",
    latent_dim: int | None = None,
    kl_weight: float = 1.0,
    recon_batch: str = "mean",
    kl_batch: str = "mean",
    batch_size: int = 1,
    data_range: float = 1.0,
) -> tuple[float, float]:
    """(weight on Σ_b E_b^pixel, weight on Σ_b KL_b) in the loss, after checking every input."""
    _positive_int(num_dims, "num_dims", "the dimensions of one example (784 for 28×28 MNIST)")
    _one_of(error, "error", ERRORS, "the reconstruction error: squared (MSE), absolute (L1), bce")
    _one_of(recon, "recon", RECON_REDUCTIONS, "the error summed or averaged over dimensions")
    _one_of(kl, "kl", LATENT_REDUCTIONS, "the KL summed or averaged over latent dimensions")
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
    if kl == "mean":
        _positive_int(latent_dim, "latent_dim", "the latents the KL is averaged over (kl='mean')")
    if error == "bce" and data_range != 1.0:
        raise ValueError(f"data_range={data_range:g} must be 1 for error='bce': BCE needs [0, 1]")
    per_dim = num_dims if recon == "mean" else 1
    per_latent = latent_dim if kl == "mean" else 1
    recon_rho = 1.0 / batch_size if recon_batch == "mean" else 1.0
    kl_rho = 1.0 / batch_size if kl_batch == "mean" else 1.0
    recon_scale = recon_weight * data_range ** _RANGE_POWER[error] * recon_rho / per_dim
    return recon_scale, kl_weight * kl_rho / per_latent


class Translation(NamedTuple):
    """What a loss convention is, as a VAE objective on [0, 1] pixels (module docstring)."""

    likelihood: str  # the decoder family: 'gaussian' (squared), 'laplace' (absolute), 'bernoulli'
    scale: float | None  # σ (Gaussian) or b (Laplace) in [0, 1] pixel units; None for Bernoulli
    std: float | None  # the decoder's standard deviation: σ, or √2·b; None for Bernoulli
    beta: float  # the KL weight against the unit-scale decoder: σ², b, or the BCE's β
    is_elbo: bool  # the loss is a positive multiple of −ELBO + const (with free bits: not)
    free_bits: float  # λ, nats per latent (0: none)


def translate(num_dims: int, *, free_bits: float = 0.0, **convention: Any) -> Translation:
    """The likelihood, scale and β a loss convention is the (β-)ELBO of.

        w = a·r^p·ρ_R·k^n / (c·ρ_K·D^m);  σ² = 1/(2w) | b = 1/w | β_BCE = 1/w

    Args:
      num_dims: D, the dimensions of one example (pixels × channels).
      free_bits: λ ≥ 0 nats per latent of a free-bits KL (0: none); σ does not depend on it.
      **convention: `error` ("squared", "absolute", "bce"), `recon` ("sum"/"mean" over the D
        dims), `recon_weight`, `kl` ("sum"/"mean" over latents; "mean" needs `latent_dim`),
        `kl_weight`, `recon_batch` and `kl_batch` ("mean"/"sum" over the batch), `batch_size`,
        `data_range` (1 for [0, 1], 2 for [−1, 1], 255 for [0, 255]).

    Returns:
      Translation(likelihood, scale, std, beta, is_elbo, free_bits); `is_elbo` for a BCE means
      β = 1 (a proper ELBO on binary data).

    Raises:
      ValueError: an unknown name or a bad number; the message names the argument.
    """
    if isinstance(free_bits, bool) or not isinstance(free_bits, int | float):
        raise ValueError(f"free_bits={free_bits!r} must be a number ≥ 0: nats per latent")
    if not math.isfinite(free_bits) or free_bits < 0:
        raise ValueError(f"free_bits={free_bits!r} must be a finite number ≥ 0: nats per latent")
    recon_scale, kl_scale = _loss_weights(num_dims, **convention)
    weight = recon_scale / kl_scale
    error = convention.get("error", "squared")
    family = FAMILIES[error]
    if error == "squared":
        scale = math.sqrt(1.0 / (2.0 * weight))
        std, beta = scale, scale**2
    elif error == "absolute":
        scale = 1.0 / weight
        std, beta = math.sqrt(2.0) * scale, scale
    else:
        scale = std = None
        beta = 1.0 / weight
    is_elbo = free_bits == 0 and (family != "bernoulli" or math.isclose(beta, 1.0, rel_tol=1e-9))
    return Translation(family, scale, std, beta, is_elbo, float(free_bits))


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
    kl: str = "sum",
    latent_dim: int | None = None,
) -> float:
    """σ of the Gaussian decoder whose negative ELBO a squared-error loss is a positive multiple of.

        σ² = kl_weight · ρ_K · D^m / (2 · recon_weight · data_range² · ρ_R · k^n)

    (module docstring: m = 1 for recon="mean", n = 1 for kl="mean" over `latent_dim` latents;
    ρ = 1/batch_size for a batch mean, 1 for a sum). The arguments are `translate`'s, which
    answers the same for an L1 or BCE loss and free bits. Returns σ in this project's pixel
    units (data scaled to [0, 1]); raises ValueError naming a bad argument and what to pass.
    """
    convention = dict(recon=recon, recon_weight=recon_weight, kl_weight=kl_weight)
    convention.update(recon_batch=recon_batch, kl_batch=kl_batch, batch_size=batch_size)
    convention.update(data_range=data_range, kl=kl, latent_dim=latent_dim)
    return translate(num_dims, error="squared", **convention).scale


class Elbo(NamedTuple):
    """An ELBO on [0, 1] pixels, read off a reported loss."""

    nats: float  # ELBO per example, the decoder's normaliser included; higher is better
    bits_per_dim: float  # −ELBO on the 8-bit scale (metrics.bits_per_dim): an upper bound
    sigma: float | None  # the decoder's standard deviation (σ, √2·b); None for a Bernoulli


def loss_to_elbo(
    loss_value: float, num_dims: int, *, num_bins: int = 256, **convention: Any
) -> Elbo:
    """The ELBO per example that a reported loss value stands for, under its convention.

    `loss_value` is the loss of ONE batch of `batch_size` examples exactly as the convention
    computes it (the recon term reduced over the batch plus the weighted KL term reduced over the
    batch, nothing else added), e.g. the training loop's printed per-batch loss; an average of
    such values over batches of equal size (an epoch's mean) works the same. With a single
    posterior sample per example it is an unbiased estimate, so the ELBO returned is too. From
    the module docstring, loss = (c·ρ_K/k^n)·B · mean_b[w·E_b^pixel + KL_b], hence

        ELBO = −loss / (c·ρ_K·B/k^n) − normaliser,

    the normaliser (D/2)·log(2πσ²) (Gaussian), D·log 2b (Laplace) or 0 (a BCE at β = 1).
    bits/dim on the 8-bit scale assume a Gaussian or Laplace loss computed on dequantised pixels,
    x = (k + u)/num_bins, and a BCE computed on binary pixels (metrics.bits_per_dim).

    Args:
      loss_value: the reported loss, a finite number.
      num_dims: D.
      num_bins: pixel levels of the data (256 for 8-bit images).
      **convention: as for `translate`.

    Returns:
      Elbo(nats, bits_per_dim, sigma).

    Raises:
      ValueError: a bad argument, or a BCE loss at β ≠ 1 (no ELBO).
    """
    if isinstance(loss_value, bool) or not isinstance(loss_value, int | float):
        raise ValueError(f"loss_value={loss_value!r} must be a number: the reported loss")
    if not math.isfinite(loss_value):
        raise ValueError(f"loss_value={loss_value!r} must be finite: the reported loss")
    _positive_int(num_bins, "num_bins", "the pixel levels of the data (256 for 8-bit images)")
    translation = translate(num_dims, **convention)
    if not translation.is_elbo:
        raise ValueError(
            f"kl_weight={convention.get('kl_weight', 1.0)!r}: this BCE loss is a β-VAE at "
            f"β = {translation.beta:.4g}, and only β = 1 is an ELBO"
        )
    _, kl_scale = _loss_weights(num_dims, **convention)
    normaliser = {
        "gaussian": lambda s: 0.5 * num_dims * math.log(2.0 * math.pi * s**2),
        "laplace": lambda s: num_dims * math.log(2.0 * s),
        "bernoulli": lambda s: 0.0,
    }[translation.likelihood](translation.scale)
    elbo = -loss_value / (kl_scale * convention.get("batch_size", 1)) - normaliser
    # Imported here so that σ alone (and the CLI's flag errors) need no jax, which metrics loads.
    from vae_jax import metrics

    binary = translation.likelihood == "bernoulli"
    bpd = float(metrics.bits_per_dim(-elbo, num_dims, discrete=binary, num_bins=num_bins))
    return Elbo(nats=elbo, bits_per_dim=bpd, sigma=translation.std)


@dataclasses.dataclass(frozen=True)
class Convention:
    """What one widely used VAE code base computes, as read from its source."""

    name: str  # a short key, e.g. for experiments/implied_sigma.py --convention
    label: str  # how a report names it
    repo: str  # GitHub owner/name
    paths: tuple[str, ...]  # the files that define the loss and its defaults
    commit: str  # the commit paths[0], which defines the loss, was read at
    likelihood: str  # "gaussian" (an MSE), "laplace" (an L1) or "bernoulli" (a BCE)
    # translate's keyword arguments, batch_size = the code's default.
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    binary_data: bool = False  # a BCE convention whose code trains on binary pixels
    # recon_weight = e^{−logvar}, a learned scalar (latent-diffusion): kwargs hold its initial 0.
    learned_log_scale: bool = False
    notes: tuple[str, ...] = ()  # what else the code's loss holds beyond the translated part


def _bce(**kwargs: Any) -> dict[str, Any]:
    return dict(error="bce", **kwargs)


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
        name="latent_diffusion",
        label="latent-diffusion AutoencoderKL, L1/e^logvar + logvar + 1e-6 × KL",
        repo="CompVis/latent-diffusion",
        paths=(
            "ldm/modules/losses/contperceptual.py",
            "ldm/modules/distributions/distributions.py",
            "configs/autoencoder/autoencoder_kl_32x32x4.yaml",
            "ldm/data/imagenet.py",
        ),
        commit="e66308c7f2e64cb581c6d27ab6fbeb846828253b",
        likelihood="laplace",
        kwargs=dict(
            error="absolute",
            recon="sum",
            recon_weight=1.0,  # e^{−logvar} at logvar_init = 0
            kl_weight=1e-6,
            recon_batch="mean",
            kl_batch="mean",
            batch_size=12,
            data_range=2.0,
        ),
        learned_log_scale=True,
        notes=(
            "perceptual_weight = 1 adds the image's LPIPS distance to every pixel's L1 term, and "
            "after disc_start steps an adversarial term joins: neither is a log-density in x, so "
            "the likelihood above is that of the L1 + KL part (perceptual_weight = 0, before "
            "disc_start)",
        ),
    ),
    Convention(
        name="pytorch_examples",
        label="pytorch/examples vae/main.py (BCE)",
        repo="pytorch/examples",
        paths=("vae/main.py",),
        commit="cd01f93000a6679e768700dd29e417a1e5fd10e5",
        likelihood="bernoulli",
        kwargs=_bce(recon="sum", recon_batch="sum", kl_batch="sum", batch_size=128),
    ),
    Convention(
        name="keras",
        label="Keras VAE example (BCE)",
        repo="keras-team/keras-io",
        paths=("examples/generative/vae.py",),
        commit="cca4efba8e0b8514ae3817931696294039b3bfc9",
        likelihood="bernoulli",
        kwargs=_bce(recon="sum", recon_batch="mean", kl_batch="mean", batch_size=128),
    ),
    Convention(
        name="flax",
        label="flax examples/vae (BCE)",
        repo="google/flax",
        paths=("examples/vae/train.py",),
        commit="b60f7f45b90f8fc42a88b1639c9cc88a40b298d3",
        likelihood="bernoulli",
        kwargs=_bce(recon="sum", recon_batch="mean", kl_batch="mean", batch_size=128),
        binary_data=True,
    ),
    Convention(
        name="jax_ai_stack",
        label="JAX AI Stack digits VAE (mean BCE + 0.1 × mean-over-latents KL)",
        repo="jax-ml/jax-ai-stack",
        paths=("docs/source/digits_vae.md",),
        commit="0693f65c7593c8d24d97491f8d2f35913ae55bb2",
        likelihood="bernoulli",
        kwargs=_bce(
            recon="mean",
            kl="mean",
            latent_dim=8,
            kl_weight=0.1,
            recon_batch="mean",
            kl_batch="mean",
            batch_size=1347,  # the whole training split, one batch per step
        ),
        binary_data=True,
    ),
)


def get_convention(name: str) -> Convention:
    """The known convention called `name`; ValueError listing the names otherwise."""
    for convention in KNOWN_CONVENTIONS:
        if convention.name == name:
            return convention
    names = ", ".join(c.name for c in KNOWN_CONVENTIONS)
    raise ValueError(f"convention={name!r} is not known; pass one of {names}")


def convention_translation(
    convention: Convention, num_dims: int, *, batch_size: int | None = None
) -> Translation:
    """`translate` of a known convention for D = `num_dims`; `batch_size=None` uses the code's
    default batch size, give one to ask what that code implies at another."""
    kwargs = dict(convention.kwargs)
    if batch_size is not None:
        kwargs["batch_size"] = batch_size
    return translate(num_dims, **kwargs)


def convention_sigma(
    convention: Convention, num_dims: int, *, batch_size: int | None = None
) -> float | None:
    """σ a known Gaussian (MSE) convention implies for D = `num_dims`; None for the others."""
    if convention.likelihood != "gaussian":
        return None
    return convention_translation(convention, num_dims, batch_size=batch_size).scale


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
