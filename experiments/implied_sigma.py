"""What σ does my loss imply? A loss convention → σ, the β it equals, and what that σ costs.

    python experiments/implied_sigma.py --recon=mean --num_dims=784
    python experiments/implied_sigma.py --convention=pytorch_vae --data=mnist_5k \
        --results=docs/results/sigma_sweep/results.csv

The loss described: recon_weight × (each example's squared error summed (--recon=sum) or averaged
(--recon=mean) over its num_dims dimensions), reduced over the batch by --recon_batch, plus
kl_weight × (each example's KL) reduced over the batch by --kl_batch; --data_range is the width of
the data's interval inside that loss. --convention starts from what a known code base computes
(vae_jax.conventions.KNOWN_CONVENTIONS); flags given beside it override its values. It prints
σ in [0, 1] pixel units (`vae_jax.conventions.implied_sigma`) and the β of a unit-variance β-VAE
it equals, and optionally:
  --loss_value   a reported per-batch loss → the ELBO in nats per example and bits/dim;
  --data=NAME    the linear theory's verdict: how many training-covariance eigenvalues exceed σ²,
                 i.e. how many latents the optimal linear VAE keeps (Lucas et al. 2019);
  --results=CSV  a σ sweep's results.csv: the measured fixed-σ members on either side of σ.
Bad flags print one line and exit with status 2.
"""

import csv
import inspect
import logging
import math
import pathlib
import sys

import numpy as np
from absl import app, flags

# Run as a script from anywhere: the package lives one directory up.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from vae_jax import conventions  # noqa: E402

_CONVENTION_FLAGS = (
    "recon",
    "recon_weight",
    "kl_weight",
    "recon_batch",
    "kl_batch",
    "batch_size",
    "data_range",
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
flags.DEFINE_enum(
    "recon", None, conventions.RECON_REDUCTIONS, "Squared error per example: sum or mean over dims."
)
flags.DEFINE_float("recon_weight", None, "Weight on the reconstruction term (default 1).")
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
_LOSS_VALUE = flags.DEFINE_float(
    "loss_value", None, "A reported per-batch loss under this convention: printed as an ELBO."
)
_DATA = flags.DEFINE_string(
    "data", None, "A dataset (vae_jax.data): how many covariance eigenvalues exceed σ²."
)
_RESULTS = flags.DEFINE_string(
    "results", None, "results.csv of a σ sweep: the measured members on either side of σ."
)

_NEEDED_COLUMNS = (
    "likelihood",
    "sigma",
    "status",
    "test/iwae_nll",
    "test/active_units",
    "test/recon_mse",
)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e).strip().splitlines()[0])


def _describe(kwargs: dict, num_dims: int) -> str:
    signature = inspect.signature(conventions.implied_sigma).parameters
    full = {name: signature[name].default for name in _CONVENTION_FLAGS}
    full.update(kwargs)
    recon = "summed" if full["recon"] == "sum" else "averaged"
    return (
        f"loss = {full['recon_weight']:g} × squared error {recon} over D = {num_dims} dims, "
        f"{full['recon_batch']} over the batch + {full['kl_weight']:g} × KL, "
        f"{full['kl_batch']} over the batch (batch {full['batch_size']}, "
        f"data range {full['data_range']:g})"
    )


def _load_data(name: str) -> tuple[np.ndarray, int]:
    from vae_jax import data  # tfds and jax load only when --data asks for them

    logging.getLogger("absl").setLevel(logging.ERROR)  # tfds's INFO lines about its files
    try:
        x = data.load_numpy(name, "train")
    except data.DataError as e:
        _fail(f"--data={name}: {e}")
    return x.reshape(len(x), -1), data.NUM_BINS.get(name, 256)


def _linear_verdict(name: str, x: np.ndarray, sigma: float) -> list[str]:
    from vae_jax import linear

    eigvals = np.asarray(linear.data_spectrum(x)[0], np.float64)
    kept = int(np.sum(eigvals > sigma**2))
    lines = [
        f"linear theory on {name} (train, N = {x.shape[0]}, D = {x.shape[1]}): "
        f"{kept} of {x.shape[1]} covariance eigenvalues exceed σ² = {sigma**2:.4g}, so the "
        f"optimal linear VAE keeps at most {kept} latents (the rest collapse: λ_i ≤ σ²)."
    ]
    if kept:
        lines.append(f"  smallest kept eigenvalue λ_{kept} = {eigvals[kept - 1]:.4g}")
    if kept < len(eigvals):
        lines.append(f"  largest collapsed eigenvalue λ_{kept + 1} = {eigvals[kept]:.4g}")
    return lines


def _number(row: dict, key: str) -> float | None:
    try:
        value = float(row.get(key) or "nan")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _read_fixed_sigma_members(path: str) -> dict[float, list[dict]]:
    """The sweep's finished fixed-σ Gaussian ELBO members (β = 1, no remedy), by σ."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except OSError as e:
        _fail(f"--results={path} could not be read: {e.strerror or e}")
    except (csv.Error, UnicodeDecodeError) as e:
        _fail(f"--results={path} is not a CSV file: {e}")
    missing = [c for c in _NEEDED_COLUMNS if c not in columns]
    if missing:
        _fail(f"--results={path} lacks the columns {', '.join(missing)} of a sweep's results.csv")
    by_sigma: dict[float, list[dict]] = {}
    for row in rows:
        sigma = _number(row, "sigma")
        if (
            row["likelihood"] != "gaussian"
            or row["status"] != "ok"
            or sigma is None
            or (_number(row, "beta") or 1.0) != 1.0  # a β ≠ 1 member is not the ELBO at σ
            or row.get("remedy") not in (None, "", "none")
        ):
            continue
        by_sigma.setdefault(sigma, []).append(row)
    if not by_sigma:
        _fail(f"--results={path} has no finished fixed-σ Gaussian members (likelihood=gaussian)")
    return by_sigma


def _mean(rows: list[dict], key: str) -> float | None:
    values = [v for v in (_number(r, key) for r in rows) if v is not None]
    return sum(values) / len(values) if values else None


def _measured(path: str, sigma: float) -> list[str]:
    by_sigma = _read_fixed_sigma_members(path)
    # Selections use the validation split when the sweep measured one (DESIGN.md).
    has_val = any(_mean(r, "val/iwae_nll") is not None for r in by_sigma.values())
    select = "val/iwae_nll" if has_val else "test/iwae_nll"
    scored = {s: _mean(r, select) for s, r in by_sigma.items()}
    scored = {s: v for s, v in scored.items() if v is not None}
    if not scored:
        _fail(f"--results={path}: no fixed-σ member has a {select} value")
    best = min(scored, key=scored.get)
    best_nll = _mean(by_sigma[best], "test/iwae_nll")
    grid = sorted(by_sigma)
    seeds = max(len(r) for r in by_sigma.values())
    lines = [
        f"measured in {path} (fixed-σ Gaussian members, mean over up to {seeds} seeds; "
        f"test NLL = IWAE bound, nats per example):",
        f"  best fixed σ = {best:.4g} (selected by {select}): test NLL {best_nll:.1f} nats",
    ]
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
    for s in neighbours:
        rows = by_sigma[s]
        nll = _mean(rows, "test/iwae_nll")
        active = _mean(rows, "test/active_units")
        mse = _mean(rows, "test/recon_mse")
        cost = "–" if nll is None or best_nll is None else f"{nll - best_nll:+.1f}"
        lines.append(
            f"    σ = {s:.4g}: test NLL {_fmt(nll, '.1f')} nats ({cost} against the best), "
            f"{_fmt(active, '.1f')} active units, recon MSE {_fmt(mse, '.4f')}"
        )
    return lines


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    kwargs: dict = {}
    if _CONVENTION.value is not None:
        convention = conventions.get_convention(_CONVENTION.value)
        if convention.likelihood != "gaussian":
            _fail(
                f"--convention={convention.name} is a {convention.likelihood} (cross-entropy) "
                "loss: it implies no Gaussian σ; see docs/conventions.md"
            )
        kwargs.update(convention.kwargs)
    kwargs.update({k: flags.FLAGS[k].value for k in _CONVENTION_FLAGS if flags.FLAGS[k].present})

    x = num_bins = None
    num_dims = _NUM_DIMS.value
    if _DATA.value is not None:
        x, num_bins = _load_data(_DATA.value)
        if num_dims is not None and num_dims != x.shape[1]:
            _fail(
                f"--num_dims={num_dims} but --data={_DATA.value} has {x.shape[1]} dims per "
                f"example; pass --num_dims={x.shape[1]} or leave it out"
            )
        num_dims = x.shape[1]
    if num_dims is None:
        _fail("--num_dims is required (e.g. --num_dims=784 for MNIST), or give --data=NAME")

    try:
        sigma = conventions.implied_sigma(num_dims, **kwargs)
        elbo = None
        if _LOSS_VALUE.value is not None:
            elbo = conventions.loss_to_elbo(
                _LOSS_VALUE.value, num_dims, **kwargs, num_bins=num_bins or 256
            )
    except ValueError as e:  # every message starts with the argument's name, which is the flag's
        _fail(f"--{e}")

    lines = [
        _describe(kwargs, num_dims),
        f"σ = {sigma:.4g} (σ² = {sigma**2:.4g}) in [0, 1] pixel units: the loss is a positive "
        "multiple of the negative ELBO of a Gaussian decoder N(f(z), σ²I), up to a constant",
        f"β = {sigma**2:.4g}: the same objective as a β-VAE with a unit-variance decoder, "
        "‖x − f(z)‖²/2 + β·KL",
    ]
    if elbo is not None:
        lines.append(
            f"reported loss {_LOSS_VALUE.value:g} = ELBO {elbo.nats:.1f} nats per example "
            f"({elbo.bits_per_dim:.3f} bits/dim if the pixels were dequantised; "
            "normaliser −(D/2)·log 2πσ² included)"
        )
    if x is not None:
        lines += _linear_verdict(_DATA.value, x, sigma)
    if _RESULTS.value is not None:  # read before printing: a bad file prints only its error
        lines += _measured(_RESULTS.value, sigma)
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
