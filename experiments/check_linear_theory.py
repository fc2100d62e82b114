"""Check converged linear VAEs against the pPCA theory on real data, for every σ² that is at least
5% from every eigenvalue of the training covariance.

    python experiments/check_linear_theory.py --workdir=runs/linear_check
    python experiments/check_linear_theory.py --data=digits --latent_dims=6,16 --workdir=runs/lc

For each data set and latent size k, the σ² grid is 1.5·λ_1 and the geometric mid-point of every
gap (λ_i, λ_{i+1}), i ≤ k (and the first gap below λ_k), wide enough to leave σ² at least 5% from
every eigenvalue (λ: the covariance of the examples the sweep trains on, the training split less
its validation examples); the grid is trained as one sweep of experiments/configs/linear_vae.py
(fixed σ only) into WORKDIR/<data>_k<k>. A member passes when its trained active units equal
#{i ≤ k : λ_i > σ²}, its test ELBO is within 1% of the analytic optimum (pPCA at that σ², W fitted
on the training split) and, if it converged, every latent's KL on the training split is within
0.01 nats of ½·log⁺(λ_i/σ²). Prints one line per member; exit status 1 if any fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MARGIN = 0.05  # σ² at least this fraction away from every eigenvalue


def sigma_sq_grid(eigvals: np.ndarray, latent_dim: int, margin: float = MARGIN) -> list[float]:
    """1.5·λ_1 and the gaps' geometric mid-points (i ≤ k, then the first gap below λ_k), keeping
    only σ² with |σ² − λ_j| ≥ margin·λ_j for every eigenvalue λ_j."""
    eigvals = np.asarray(eigvals, np.float64)

    def clear(s: float) -> bool:
        return bool(np.all(np.abs(s - eigvals) >= margin * eigvals))

    grid = [1.5 * float(eigvals[0])]
    for i in range(len(eigvals) - 1):
        s = float(np.sqrt(eigvals[i] * eigvals[i + 1]))
        if eigvals[i + 1] > 0 and clear(s):
            grid.append(s)
            if i + 1 >= latent_dim:  # the first σ² below λ_k: every latent active
                break
    return grid


def linear_config(data_name: str, latent_dim: int):
    spec = importlib.util.spec_from_file_location(
        "linear_vae_config", REPO / "experiments" / "configs" / "linear_vae.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.name = data_name
    config.model.latent_dim = latent_dim
    config.eval.iwae_samples = 8  # the IWAE bound is not part of this check
    return config


def failures(theory: list[dict]) -> list[str]:
    """Why each failing member fails (empty: all pass)."""
    out = []
    for t in theory:
        name = f"{t['group']} σ²={t['sigma_sq']:.4g}"
        if t["split"] == "test":
            if t["trained_active"] != t["predicted_active"]:
                out.append(
                    f"{name}: {t['trained_active']} active, {t['predicted_active']} predicted"
                )
            if t["gap_percent"] >= 1.0:
                out.append(f"{name}: test ELBO {t['gap_percent']:.3f}% from the optimum")
        elif t["converged"] and t["kl_per_latent_max_error"] > 0.01:
            out.append(f"{name}: KL per latent off by {t['kl_per_latent_max_error']:.4f} nats")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits,mnist_5k")
    parser.add_argument("--latent_dims", default="6,16,32")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)

    from vae_jax import experiment, sweep

    all_failures = []
    for data_name in args.data.split(","):
        # The spectrum of the data the sweep trains on: the training split minus the examples
        # data.validation_fraction holds out.
        x = experiment.build_problem(linear_config(data_name, 1)).train_x
        x = x.reshape(len(x), -1).astype(np.float64)
        eigvals = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))[::-1]
        for latent_dim in (int(k) for k in args.latent_dims.split(",")):
            config = linear_config(data_name, latent_dim)
            config.sweep.sigma_from_spectrum = False
            config.sweep.sigma = tuple(
                float(np.sqrt(s)) for s in sigma_sq_grid(eigvals, latent_dim)
            )
            config.sweep.references = ()
            path = pathlib.Path(args.workdir) / f"{data_name}_k{latent_dim}"
            sweep.train_and_evaluate(config, str(path))
            theory = json.loads((path / "linear_theory.json").read_text())
            train = {t["sigma_sq"]: t for t in theory if t["split"] == "train"}
            for t in (t for t in theory if t["split"] == "test"):
                print(
                    f"{data_name} k={latent_dim} σ²={t['sigma_sq']:.4g}: steps {t['steps']} "
                    f"({'converged' if t['converged'] else 'cap'}), active {t['trained_active']}"
                    f"/{t['predicted_active']} predicted, test ELBO gap {t['gap_percent']:.4f}%, "
                    f"max |ΔKL_i| (train) {train[t['sigma_sq']]['kl_per_latent_max_error']:.5f}",
                    flush=True,
                )
            all_failures += [f"{data_name} k={latent_dim} {f}" for f in failures(theory)]
    for f in all_failures:
        print(f"FAIL {f}")
    print(
        "all members agree with the theory" if not all_failures else f"{len(all_failures)} failed"
    )
    return 1 if all_failures else 0


if __name__ == "__main__":
    sys.exit(main())
