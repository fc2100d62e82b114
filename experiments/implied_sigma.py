r"""What does my loss imply? A loss convention → the decoder, its σ, the β, and what that σ costs.

    python experiments/implied_sigma.py --recon=mean --num_dims=784
    python experiments/implied_sigma.py --convention=pytorch_vae --data=mnist_5k \
        --results=docs/results/sigma_sweep/results.csv
    python experiments/implied_sigma.py --convention=latent_diffusion --logvar=-3 --data=mnist_5k

The loss described: recon_weight × (each example's error — squared (--error=squared), absolute
(L1, --error=absolute) or binary cross-entropy (--error=bce) — summed (--recon=sum) or averaged
(--recon=mean) over its num_dims dimensions), reduced over the batch by --recon_batch, plus
kl_weight × (each example's KL summed (--kl=sum) or averaged (--kl=mean, needs --latent_dim) over
its latents) reduced over the batch by --kl_batch; --data_range is the width of the data's
interval inside that loss; --free_bits=λ charges max(λ, KL_j) per latent; --logvar=s is a learned
scalar log scale that divides the error by e^s and adds s per element (the latent-diffusion
autoencoder's `loss.logvar`). --convention starts from what a known code base computes
(vae_jax.conventions.KNOWN_CONVENTIONS); flags given beside it override its values.

It prints the decoder the loss is the ELBO of (`vae_jax.conventions.translate`): a Gaussian's σ or
a Laplace's b in [0, 1] pixel units and the β of a unit-scale β-VAE it equals, or for a BCE
whether it is a proper ELBO (β = 1, on binary data); then, optionally,
  --loss_value   a reported per-batch loss → the ELBO in nats per example and bits/dim;
  --data=NAME    the linear theory's verdict: how many training-covariance eigenvalues exceed σ²,
                 i.e. how many latents the optimal linear VAE keeps (Lucas et al. 2019);
  --results=CSV  a σ sweep's results.csv (or the directory holding it): the measured fixed-σ
                 members on either side of σ, as trained and with σ refitted on validation data,
                 each against the best fixed σ for that score chosen on validation data
                 (`vae_jax.report.compare`).
Bad flags print one line and exit with status 2; Ctrl-C prints one line and exits with 130.
"""

import math
import pathlib
import sys

import numpy as np
from absl import flags

# Run as a script from anywhere: the package lives one directory up.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from experiments import cli  # noqa: E402
from vae_jax import conventions  # noqa: E402

_CONVENTION_FLAGS = (
    "error",
    "recon",
    "recon_weight",
    "kl",
    "latent_dim",
    "kl_weight",
    "recon_batch",
    "kl_batch",
    "batch_size",
    "data_range",
)
_DEFAULTS = dict(
    error="squared",
    recon="sum",
    recon_weight=1.0,
    kl="sum",
    latent_dim=None,
    kl_weight=1.0,
    recon_batch="mean",
    kl_batch="mean",
    batch_size=1,
    data_range=1.0,
)
_CONVENTION = flags.DEFINE_enum(
    "convention",
    None,
    [c.name for c in conventions.KNOWN_CONVENTIONS],
    "Start from a known code base's loss (docs/conventions.md).",
)
_NUM_DIMS = flags.DEFINE_integer(
    "num_dims", None, "Dimensions of one example (784 for MNIST); default: read from --data."
)
flags.DEFINE_enum("error", None, conventions.ERRORS, "squared (MSE), absolute (L1) or bce.")
flags.DEFINE_enum(
    "recon", None, conventions.RECON_REDUCTIONS, "Error per example: sum or mean over dims."
)
flags.DEFINE_float("recon_weight", None, "Weight on the reconstruction term (default 1).")
flags.DEFINE_enum(
    "kl", None, conventions.LATENT_REDUCTIONS, "KL per example: sum or mean over latents."
)
flags.DEFINE_integer("latent_dim", None, "Latents per example (needed for --kl=mean).")
flags.DEFINE_float("kl_weight", None, "Weight on the KL term, e.g. β or kld_weight (default 1).")
flags.DEFINE_enum(
    "recon_batch", None, conventions.BATCH_REDUCTIONS, "Recon term over the batch (default mean)."
)
flags.DEFINE_enum(
    "kl_batch", None, conventions.BATCH_REDUCTIONS, "KL term over the batch (default mean)."
)
flags.DEFINE_integer("batch_size", None, "Examples per batch (default 1; the code's default).")
flags.DEFINE_float(
    "data_range", None, "Width of the data's interval in the loss: 1 [0,1], 2 [-1,1], 255 [0,255]."
)
_FREE_BITS = flags.DEFINE_float("free_bits", 0.0, "λ nats per latent of a free-bits KL (0: off).")
_LOGVAR = flags.DEFINE_float(
    "logvar", None, "A learned scalar log scale s: loss = error/e^s + s per element (+ KL)."
)
_LOSS_VALUE = flags.DEFINE_float(
    "loss_value", None, "A reported per-batch loss under this convention: printed as an ELBO."
)
_DATA = flags.DEFINE_string(
    "data", None, "A dataset (vae_jax.data): how many covariance eigenvalues exceed σ²."
)
_RESULTS = flags.DEFINE_string(
    "results",
    None,
    "results.csv of a σ sweep, or its directory: the measured members on either side of σ.",
)

_NEEDED_COLUMNS = (
    "group",
    "sigma",
    "status",
    "test/iwae_nll",
    "test/active_units",
    "test/recon_mse",
)
_MAIN_GROUP = "gaussian"  # the σ sweep's fixed-σ Gaussian members
_ERROR_WORDS = {"squared": "squared error", "absolute": "absolute error (L1)", "bce": "BCE"}


def _describe(kwargs: dict, num_dims: int, log_scale: float | None) -> str:
    full = dict(_DEFAULTS, **kwargs)
    recon = "summed" if full["recon"] == "sum" else "averaged"
    weight = f"e^−logvar (logvar = {log_scale:g})" if log_scale is not None else None
    kl = "summed over latents" if full["kl"] == "sum" else f"averaged over {full['latent_dim']}"
    return (
        f"loss = {weight or format(full['recon_weight'], 'g')} × {_ERROR_WORDS[full['error']]} "
        f"{recon} over D = {num_dims} dims, {full['recon_batch']} over the batch"
        + (" (+ logvar per element)" if log_scale is not None else "")
        + f" + {full['kl_weight']:g} × KL {kl}, {full['kl_batch']} over the batch "
        f"(batch {full['batch_size']}, data range {full['data_range']:g})"
    )


def _decoder_lines(t: conventions.Translation, kwargs: dict, convention, log_scale) -> list[str]:
    """What the loss is the (β-)ELBO of, in words."""
    if t.likelihood == "gaussian":
        return [
            f"σ = {t.scale:.4g} (σ² = {t.scale**2:.4g}) in [0, 1] pixel units: the loss is a "
            "positive multiple of the negative ELBO of a Gaussian decoder N(f(z), σ²I), up to a "
            "constant",
            f"β = {t.beta:.4g}: the same objective as a β-VAE with a unit-variance decoder, "
            "‖x − f(z)‖²/2 + β·KL",
        ]
    if t.likelihood == "laplace":
        lines = [
            f"b = {t.scale:.4g} in [0, 1] pixel units (standard deviation √2·b = {t.std:.4g}): "
            "the loss is a positive multiple of the negative ELBO of a Laplace decoder with "
            "scale b, up to a constant",
            f"β = {t.beta:.4g}: the same objective as a β-VAE with a unit-scale Laplace decoder, "
            "‖x − f(z)‖₁ + β·KL",
        ]
        if log_scale is not None:
            data_range = kwargs.get("data_range", 1.0)
            own_b = math.exp(log_scale) / data_range
            lines.append(
                f"against its own Laplace decoder, b = e^logvar = {math.exp(log_scale):.4g} in "
                f"the loss's units ({own_b:.4g} in [0, 1] pixels), it is a β-VAE with "
                f"β = {t.scale / own_b:.4g}; logvar is learned, and at its optimum e^logvar is "
                "the mean |x − f(z)| in the loss's units, so b above = that β × the mean "
                "absolute error in pixel units (--logvar: read loss.logvar from the checkpoint)"
            )
        return lines
    if t.is_elbo:
        if convention is not None and convention.binary_data:
            data = "this code trains on binary pixels, so it is a proper ELBO"
        elif convention is not None:
            data = (
                "but this code trains on grey values in [0, 1], where a Bernoulli is no "
                "normalised density in x (the continuous Bernoulli adds its normaliser)"
            )
        else:
            data = "for grey values in [0, 1] it is no normalised density (continuous Bernoulli)"
        return [
            "β = 1: BCE + KL is exactly the negative ELBO of a Bernoulli decoder, which has no "
            f"σ: a proper ELBO on binary data; {data}"
        ]
    return [
        f"β = {t.beta:.4g}: a β-VAE with a Bernoulli decoder, which has no σ to absorb the "
        f"weights: only β = 1 is the ELBO (multiply kl_weight by {1 / t.beta:.4g} for it)"
    ]


def _load_data(name: str) -> tuple[np.ndarray, int]:
    from vae_jax import data  # tfds and jax load only when --data asks for them

    try:
        x = data.load_numpy(name, "train")
    except data.DataError as e:
        cli.fail(f"--data={name}: {e}")
    return x.reshape(len(x), -1), data.NUM_BINS.get(name, 256)


def _linear_verdict(
    name: str, x: np.ndarray, sigma: float, latent_dim: int | None, free_bits: float
) -> list[str]:
    from vae_jax import linear

    eigvals = np.asarray(linear.data_spectrum(x)[0], np.float64)
    exceed = int(np.sum(eigvals > sigma**2))
    kept = exceed if latent_dim is None else min(exceed, latent_dim)
    of = "" if latent_dim is None else f" of its {latent_dim}"
    lines = [
        f"linear theory on {name} (train, N = {x.shape[0]}, D = {x.shape[1]}): "
        f"{exceed} of {x.shape[1]} covariance eigenvalues exceed σ² = {sigma**2:.4g}, so the "
        f"optimal linear VAE keeps at most {kept}{of} latents (the rest collapse: λ_i ≤ σ²)."
    ]
    if exceed:
        lines.append(f"  smallest kept eigenvalue λ_{exceed} = {eigvals[exceed - 1]:.4g}")
    if exceed < len(eigvals):
        lines.append(f"  largest collapsed eigenvalue λ_{exceed + 1} = {eigvals[exceed]:.4g}")
    if free_bits > 0:
        lines.append(
            f"  with free bits, a latent the ELBO collapses may still carry up to λ = "
            f"{free_bits:g} nats at no cost: the objective no longer collapses it"
        )
    return lines


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _measured(path: str, sigma: float) -> list[str]:
    from vae_jax import workdir
    from vae_jax.report import compare  # the one comparison rule
    from vae_jax.report import rows as report_rows

    if pathlib.Path(path).is_dir():  # a sweep's workdir or stored run: its results.csv
        path = str(pathlib.Path(path) / "results.csv")
    try:
        rows = workdir.read_results_csv(path)
    except OSError as e:
        cli.fail(f"--results={path} could not be read: {e.strerror or e}")
    except (ValueError, UnicodeDecodeError) as e:
        cli.fail(f"--results={path} is not a CSV file: {e}")
    missing = [c for c in _NEEDED_COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        cli.fail(f"--results={path} lacks the columns {', '.join(missing or _NEEDED_COLUMNS)}")
    rows = report_rows.with_index(rows)
    # The per-image scores beside results.csv, when the sweep wrote them: seed-level intervals.
    per_example = workdir.read_per_example(pathlib.Path(path).parent / "per_example.npz")
    by_sigma = compare.fixed_sigma_groups(rows, _MAIN_GROUP)
    if not by_sigma:
        cli.fail(f"--results={path} has no finished fixed-σ members of group '{_MAIN_GROUP}'")
    seeds = max(len(r) for r in by_sigma.values())
    lines = [
        f"measured in {path} (fixed-σ Gaussian members, mean over up to {seeds} seeds; test NLL "
        "= IWAE bound, nats per example; each score against the best fixed σ for that score, "
        "chosen on validation data):"
    ]
    best, best_members = {}, {}
    for suffix, what in (("", "as trained"), ("_refit", "refit")):
        found = compare.best_fixed_sigma(rows, _MAIN_GROUP, suffix)
        if found is None:
            continue
        best[suffix] = report_rows.mean(found[1], "test/iwae_nll" + suffix)
        best_members[suffix] = found[1]
        refit = ", σ refitted on the validation data" if suffix else ""
        lines.append(
            f"  best fixed σ {what} = {found[0]:.4g} (by val/iwae_nll{suffix}): test NLL "
            f"{_fmt(best[suffix], '.1f')} nats{refit}"
        )
    if not best:
        lines.append("  no member has a validation score: no best σ to measure costs against")
    grid = sorted(by_sigma)
    at = [s for s in grid if math.isclose(s, sigma, rel_tol=0.01)]
    if at:
        lines.append(f"  σ = {sigma:.4g} was measured:")
        neighbours = at[:1]
    elif sigma < grid[0] or sigma > grid[-1]:
        edge = grid[0] if sigma < grid[0] else grid[-1]
        lines.append(f"  σ = {sigma:.4g} lies outside the measured σ; the nearest is {edge:.4g}:")
        neighbours = [edge]
    else:
        below = max(s for s in grid if s < sigma)
        above = min(s for s in grid if s > sigma)
        lines.append(
            f"  σ = {sigma:.4g} lies between the measured σ = {below:.4g} and {above:.4g}:"
        )
        neighbours = [below, above]
    refit_costs = []
    for s in neighbours:
        members = by_sigma[s]
        costs, intervals = {}, {}
        for suffix in best:
            nll = report_rows.mean(members, "test/iwae_nll" + suffix)
            if nll is not None and best[suffix] is not None:
                costs[suffix] = nll - best[suffix]
                diff = compare.difference(members, best_members[suffix], per_example, suffix)
                intervals[suffix] = (
                    f", 95% CI {diff.low:+.1f} to {diff.high:+.1f}"
                    + ("" if diff.resolved else ", not resolved")
                    if diff is not None
                    else ""
                )
        nll = report_rows.mean(members, "test/iwae_nll")
        cost = (
            f" ({costs['']:+.1f} against the best as trained{intervals['']})" if "" in costs else ""
        )
        line = (
            f"    σ = {s:.4g}: test NLL {_fmt(nll, '.1f')} nats{cost}, "
            f"{_fmt(report_rows.mean(members, 'test/active_units'), '.1f')} active units, "
            f"recon MSE {_fmt(report_rows.mean(members, 'test/recon_mse'), '.4f')}"
        )
        if "_refit" in costs:
            refit_nll = report_rows.mean(members, "test/iwae_nll_refit")
            line += (
                f"; refit {refit_nll:.1f} nats ({costs['_refit']:+.1f} against the best refit"
                f"{intervals['_refit']})"
            )
            refit_costs.append(f"{costs['_refit']:+.1f}")
        lines.append(line)
    if refit_costs:
        lines.append(
            f"  with σ refitted on the validation data: {' and '.join(refit_costs)} nats "
            "against the best fixed σ refit"
        )
    return lines


def main(argv: list[str]) -> None:
    kwargs: dict = {}
    convention = None
    if _CONVENTION.value is not None:
        convention = conventions.get_convention(_CONVENTION.value)
        kwargs.update(convention.kwargs)
    kwargs.update({k: flags.FLAGS[k].value for k in _CONVENTION_FLAGS if flags.FLAGS[k].present})
    log_scale = _LOGVAR.value
    if log_scale is None and convention is not None and convention.learned_log_scale:
        log_scale = 0.0  # the code's logvar_init; --logvar gives the trained value
    if log_scale is not None:
        if flags.FLAGS["recon_weight"].present:
            cli.fail("--recon_weight and --logvar both set the recon weight (e^−logvar); give one")
        if not math.isfinite(log_scale) or abs(log_scale) > 50:
            cli.fail(f"--logvar={log_scale:g} must be a finite log scale in [-50, 50]")
        kwargs["recon_weight"] = math.exp(-log_scale)

    x = num_bins = None
    num_dims = _NUM_DIMS.value
    if _DATA.value is not None:
        x, num_bins = _load_data(_DATA.value)
        if num_dims is not None and num_dims != x.shape[1]:
            cli.fail(
                f"--num_dims={num_dims} but --data={_DATA.value} has {x.shape[1]} dims per "
                f"example; pass --num_dims={x.shape[1]} or leave it out"
            )
        num_dims = x.shape[1]
    if num_dims is None:
        cli.fail("--num_dims is required (e.g. --num_dims=784 for MNIST), or give --data=NAME")

    try:
        translation = conventions.translate(num_dims, free_bits=_FREE_BITS.value, **kwargs)
        elbo = None
        if _LOSS_VALUE.value is not None and translation.free_bits == 0:
            loss = _LOSS_VALUE.value
            if log_scale is not None:  # the + logvar per element, reduced like the error
                full = dict(_DEFAULTS, **kwargs)
                per_example = num_dims / (num_dims if full["recon"] == "mean" else 1)
                batch = full["batch_size"] if full["recon_batch"] == "sum" else 1
                loss -= log_scale * per_example * batch
            elbo = conventions.loss_to_elbo(loss, num_dims, **kwargs, num_bins=num_bins or 256)
    except ValueError as e:  # every message starts with the argument's name, which is the flag's
        cli.fail(f"--{e}")

    lines = [_describe(kwargs, num_dims, log_scale)]
    lines += _decoder_lines(translation, kwargs, convention, log_scale)
    if translation.free_bits > 0:
        lines.append(
            f"free bits λ = {translation.free_bits:g} nats per latent: the loss charges "
            "max(λ, KL_j) for each latent j, so it is not the ELBO while a latent's KL is below "
            "λ — it exceeds the scaled −ELBO by at most k·λ nats per example — and the scale "
            "above is as without it"
        )
    lines += [f"note: {n}" for n in (convention.notes if convention else ())]
    if elbo is not None:
        lines.append(
            f"reported loss {_LOSS_VALUE.value:g} = ELBO {elbo.nats:.1f} nats per example "
            f"({elbo.bits_per_dim:.3f} bits/dim if the pixels were "
            + ("binary" if translation.likelihood == "bernoulli" else "dequantised")
            + "; the decoder's normaliser included)"
        )
    elif _LOSS_VALUE.value is not None:
        lines.append("--loss_value: with free bits the loss is no ELBO (at most k·λ nats off)")
    if translation.std is None:
        lines.append(
            "linear theory: its verdict (latent i collapses when λ_i ≤ σ²) is for a Gaussian "
            "decoder; a Bernoulli decoder has no σ to give one"
        )
    elif x is not None:
        if translation.likelihood == "laplace":
            lines.append(
                f"(linear theory at the Gaussian σ of the same std, √2·b = {translation.std:.4g})"
            )
        lines += _linear_verdict(
            _DATA.value, x, translation.std, kwargs.get("latent_dim"), translation.free_bits
        )
    else:
        lines.append(
            f"linear theory: give --data=NAME (e.g. mnist_5k) for how many latents an optimal "
            f"linear VAE keeps at σ = {translation.std:.4g}"
        )
    if _RESULTS.value is not None:  # read before printing: a bad file prints only its error
        if translation.std is None:
            lines.append("--results: a σ sweep places a Gaussian σ; a Bernoulli loss has none")
        else:
            if translation.likelihood == "laplace":
                lines.append("(the sweep's Gaussian members at the same standard deviation √2·b)")
            lines += _measured(_RESULTS.value, translation.std)
    print("\n".join(lines))


if __name__ == "__main__":
    cli.run(main, usage=__doc__)
