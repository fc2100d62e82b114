"""What the report needs from a model or from the data, computed by the driver and stored in the
workdir, so that `vae_jax.report` renders report.md and every figure from files alone.

write(path, rows, groups, ...)        a sweep: figures.npz, sample_quality.json and (linear VAEs)
                                      linear_theory.json
write_single_run(path, problem, ...)  a single run: figures.npz for `report.single_run_plots`
from_config(config) -> dict           figures.npz's sweep arrays recomputed from the data a
                                      config.json names (a workdir written before figures.npz)

A sweep's figures.npz: `num_train`, `num_validation`, `num_test` (the splits' sizes);
`eigenvalues` [D] of the main group's training-data covariance, descending (float64);
`rd_sigma_sq`, `rd_rate`, `rd_distortion`, `rd_distortion_at_mean` [200]: the optimal linear
VAE's rate–distortion curve (`linear.rate_distortion`); and, where the sweep writes no
samples.npz, `reconstruction` and `prior_mean` uint8 [main rows, 8, H, W, C] and `test`
uint8 [8, H, W, C] in samples.npz's layout (the main group's rows come first in results.csv).
"""

from __future__ import annotations

import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import data, linear, metrics, models, pixels, workdir
from vae_jax.likelihoods import get_likelihood
from vae_jax.objective import Hyper, Problem, observation_log_sigma
from vae_jax.sample_quality import to_uint8

FILE = "figures.npz"
QUALITY_FILE = "sample_quality.json"
LINEAR_THEORY_FILE = "linear_theory.json"
# Images per member that a figure shows when samples.npz holds none.
NUM_IMAGES = 8


class Trained(NamedTuple):
    """One structure group after training: its problem and its members' stacked parameters."""

    problem: Problem
    params: Any  # the members' Flax params, stacked along a leading axis
    hyper: Hyper  # the members' stacked hyperparameters (σ, β, …)


def _flat(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x.reshape(len(x), -1), jnp.float64)


def spectrum_and_curve(train_x: np.ndarray, latent_dim: int, num: int = 200) -> dict[str, Any]:
    """`eigenvalues` [D] of the training data's covariance (descending) and the optimal linear
    VAE's (rate, distortion) as σ² sweeps the spectrum (`linear.rate_distortion`):
    `rd_sigma_sq`, `rd_rate`, `rd_distortion`, `rd_distortion_at_mean`, [num] each. float64."""
    with jax.enable_x64(True):
        eigvals = linear.data_spectrum(_flat(train_x))[0]
        top = float(eigvals[0])
        # λ_k may be 0 (or round below it) when k reaches the data's rank.
        bottom = max(float(eigvals[min(latent_dim, eigvals.shape[0]) - 1]), 1e-6 * top)
        sigma_sq = jnp.geomspace(bottom / 20.0, 4.0 * top, num)
        curve = linear.rate_distortion(eigvals, sigma_sq, latent_dim)
        out = {"rd_" + k: np.asarray(v) for k, v in curve.items()}
        out["rd_sigma_sq"] = np.asarray(sigma_sq)
        out["eigenvalues"] = np.asarray(eigvals)
    return out


def reconstructions_and_samples(
    model: models.VAE, likelihood, params: Any, log_sigma: jax.Array, x: np.ndarray, rng: jax.Array
) -> tuple[np.ndarray, np.ndarray]:
    """Likelihood means of decode(E_q[z|x]) for `x` [N, ...], and of decode(z), z ~ N(0, I)."""

    def recon(x):
        mean, _ = model.apply(params, x, method=models.VAE.encode)
        return likelihood.mean(model.apply(params, mean, method=models.VAE.decode), log_sigma)

    def sample(z):
        return likelihood.mean(model.apply(params, z, method=models.VAE.decode), log_sigma)

    z = jax.random.normal(rng, (len(x), model.latent_dim))
    return np.asarray(jax.vmap(recon)(jnp.asarray(x))), np.asarray(jax.vmap(sample)(z))


def is_image(x: np.ndarray) -> bool:
    """Whether examples [N, ...] are images a figure can show ([N, H, W, C], H and W > 1)."""
    return x.ndim == 4 and x.shape[1] > 1 and x.shape[2] > 1


def member_images(trained: Trained, count: int, rng: jax.Array) -> dict[str, np.ndarray]:
    """samples.npz's `reconstruction` and `prior_mean` (uint8 [count, NUM_IMAGES, ...]) of the
    group's first `count` members, and `test`, the images reconstructed; {} for non-images."""
    problem = trained.problem
    x = problem.test_x[:NUM_IMAGES]
    if not is_image(x):
        return {}
    recons, priors = [], []
    for i in range(count):
        params = jax.tree.map(lambda a, i=i: a[i], trained.params)
        hyper = jax.tree.map(lambda a, i=i: a[i], trained.hyper)
        log_sigma = observation_log_sigma(problem, params, hyper)
        recon, prior = reconstructions_and_samples(
            problem.model, problem.likelihood, params, log_sigma, x, jax.random.fold_in(rng, i)
        )
        recons.append(recon)
        priors.append(prior)
    return {
        "reconstruction": np.asarray(to_uint8(jnp.asarray(np.stack(recons)))),
        "prior_mean": np.asarray(to_uint8(jnp.asarray(np.stack(priors)))),
        "test": np.asarray(to_uint8(jnp.asarray(x))),
    }


def write(
    path: pathlib.Path,
    rows: list[dict],
    groups: dict[str, Trained],
    *,
    latent_dim: int,
    member_images_too: bool,
    sample_floor: dict | None = None,
) -> None:
    """A sweep's figures.npz, its sample_quality.json (`sample_floor`: the feature network's
    accuracy and the real floor; None without sample metrics) and, for linear VAEs,
    linear_theory.json. `rows`: results.csv's rows in order; `groups`: each group's `Trained`,
    the main group first; `member_images_too`: store the main group's images (no samples.npz)."""
    main = next(iter(groups.values()))
    problem = main.problem
    arrays = {
        "num_train": np.asarray(len(problem.train_x)),
        "num_validation": np.asarray(len(problem.val_x)),
        "num_test": np.asarray(len(problem.test_x)),
        **spectrum_and_curve(problem.train_x, latent_dim),
    }
    if member_images_too:
        count = sum(r["group"] == rows[0]["group"] for r in rows)
        arrays |= member_images(main, count, jax.random.key(0))
    workdir.write_arrays(path / FILE, arrays)
    if sample_floor is not None:
        workdir.write_json_atomic(path / QUALITY_FILE, sample_floor)
    if problem.model.kind == "linear" and problem.likelihood.scale_power == 2:  # Gaussian pPCA
        theory = linear_theory_rows(rows, groups, latent_dim)
        workdir.write_json_atomic(path / LINEAR_THEORY_FILE, theory)


def from_config(config: dict) -> dict[str, np.ndarray]:
    """figures.npz's sweep arrays (no images) recomputed from the data that a workdir's
    config.json names, as the driver's problem holds it: the training split (first
    `data.train_subset` examples) less its validation examples, fixed-binarised for a binary
    family. For a workdir written before figures.npz; reads data, runs no model."""
    name, data_config = config["data"]["name"], config["data"]
    idx_dir = data_config.get("idx_dir")  # None in a config.json written before the field
    train_x = data.load_numpy(name, "train", idx_dir=idx_dir)
    if data_config.get("train_subset") is not None:
        train_x = train_x[: data_config["train_subset"]]
    train_x, val_x = data.split_validation(train_x, data_config["validation_fraction"])
    family = get_likelihood(config["likelihood"]["name"])
    if family.binary_data and data_config.get("binarize") == "fixed":
        train_x = pixels.fixed_binarize(train_x, config["seed"])
    return {
        "num_train": np.asarray(len(train_x)),
        "num_validation": np.asarray(len(val_x)),
        "num_test": np.asarray(data.num_examples(name, "test", idx_dir=idx_dir)),
        **spectrum_and_curve(train_x, config["model"]["latent_dim"]),
    }


def read(path: pathlib.Path, config: dict) -> dict[str, np.ndarray]:
    """figures.npz's arrays, or `from_config` for a workdir written before it."""
    if not (path / FILE).exists():
        return from_config(config)
    with np.load(path / FILE) as f:
        return {k: f[k] for k in f.files}


def write_single_run(
    path: pathlib.Path,
    problem: Problem,
    params: Any,
    log_sigma: jax.Array,
    per_example: dict[str, np.ndarray],
    rng: jax.Array,
) -> None:
    """A single run's figures.npz: `kl_per_latent` [latents] (test mean), `test_elbo`,
    `test_recon`, `test_kl` (test means), `decoder_std` (root-mean-square of a decoder-predicted
    scale, NaN for other families) and, for images, `test`, `reconstruction`, `prior_mean`
    [32, H, W, C] float32 (likelihood means; the reconstruction at the posterior mean)."""
    arrays = {
        "kl_per_latent": np.mean(per_example["kl_per_latent"], axis=0),
        **{f"test_{k}": np.asarray(np.mean(per_example[k])) for k in ("elbo", "recon", "kl")},
        "decoder_std": np.asarray(
            np.sqrt(np.mean(per_example["scale_variance"]))
            if problem.likelihood.std_factor is not None
            else np.nan
        ),
    }
    x = problem.test_x[:32]
    if is_image(x):
        recon, prior = reconstructions_and_samples(
            problem.model, problem.likelihood, params, log_sigma, x, rng
        )
        arrays |= {"test": x, "reconstruction": recon, "prior_mean": prior}
    workdir.write_arrays(path / FILE, arrays)


def sweep_images(image_sets: list[dict[str, np.ndarray] | None]) -> dict | None:
    """samples.npz's arrays from each group's image sets (`sample_quality`'s uint8
    `prior_mean`, `prior_sample`, `reconstruction` [members, N, ...], `test` [N, ...]) in
    results.csv's group order; None where a group has none."""
    if not image_sets or any(s is None for s in image_sets):
        return None
    keys = ("prior_mean", "prior_sample", "reconstruction")
    return {k: np.concatenate([s[k] for s in image_sets]) for k in keys} | {
        "test": image_sets[0]["test"]
    }


@jax.jit
def _split_stats(x, mats, sigma_sq, ppca):
    """Means over the data set `x` [N, D] of the member's exact ELBO terms, its active units and
    collapsed fraction (mean KL < 0.01 nats, as `evaluate` counts it), and the pPCA
    log-likelihood `ppca` reaches there."""
    per_example = jax.vmap(lambda x_: linear.linear_vae_elbo(x_, **mats, sigma_sq=sigma_sq))(x)
    means = {k: jnp.mean(v, axis=0) for k, v in per_example.items()}
    means["active"] = metrics.active_units(x @ mats["enc_W"].T + mats["enc_b"])
    means["collapsed"] = metrics.collapsed_by_mean_kl(means["kl_per_latent"])
    means["log_p"] = linear.ppca_log_likelihood(x, ppca["W"], ppca["mu"], ppca["sigma_sq"])
    return means


_ppca_mle = jax.jit(linear.ppca_mle, static_argnums=1)
_theory = jax.jit(
    lambda eigvals, sigma_sq, k: {
        "kl_per_latent": linear.optimal_kl_per_latent(eigvals, sigma_sq, k),
        "collapsed": linear.predicted_collapsed(eigvals, sigma_sq, k),
        **linear.rate_distortion(eigvals, sigma_sq, k),
    },
    static_argnums=2,
)


def _member_rows(problem, params, row, eigvals, latent_dim) -> list[dict]:
    """One row per split: the member's exact ELBO, KL per latent, rate and distortion against the
    theory at its σ² (for a learned σ, the log-likelihood at the MLE σ² is the optimum)."""
    mats = {k: jnp.asarray(v, jnp.float64) for k, v in models.linear_vae_matrices(params).items()}
    sigma_sq = float(row["sigma"]) ** 2
    learned = problem.likelihood.shared_learned_scale
    if learned:
        sigma_sq_mle = float(linear.ppca_sigma_sq_mle(jnp.asarray(eigvals), latent_dim))
    train_x = _flat(problem.train_x)
    ppca = _ppca_mle(train_x, latent_dim, sigma_sq_mle if learned else sigma_sq)
    theory = jax.tree.map(np.asarray, _theory(jnp.asarray(eigvals), sigma_sq, latent_dim))
    predicted_collapsed = int(theory["collapsed"])
    out = []
    for split, x in (("train", train_x), ("test", _flat(problem.test_x))):
        stats = jax.tree.map(np.asarray, _split_stats(x, mats, sigma_sq, ppca))
        log_p, trained_elbo = float(stats["log_p"]), float(stats["elbo"])
        trained_kl = np.sort(stats["kl_per_latent"])[::-1]
        active = int(stats["active"])
        entry = {
            "group": row["group"],
            "seed": row["seed"],
            "split": split,
            "sigma_sq": sigma_sq,
            "steps": row.get("train/steps"),
            "converged": row.get("converged"),
            "predicted_collapsed": predicted_collapsed,
            "predicted_active": latent_dim - predicted_collapsed,
            "trained_active": active,
            "trained_collapsed": int(round(float(stats["collapsed"]) * latent_dim)),
            "analytic_log_p": log_p,
            "trained_elbo": trained_elbo,
            "gap_percent": 100.0 * abs(trained_elbo - log_p) / abs(log_p),
            "kl_per_latent_trained": trained_kl.tolist(),
            "kl_per_latent_predicted": theory["kl_per_latent"].tolist(),
            "kl_per_latent_max_error": float(np.max(np.abs(trained_kl - theory["kl_per_latent"]))),
            "rate_trained": float(stats["kl"]),
            "rate_predicted": float(theory["rate"]),
            "distortion_trained": float(stats["expected_sq_error"]),
            "distortion_predicted": float(theory["distortion"]),
            # Trained latents are unordered (any rotation of the optimum is optimal), but the
            # a active ones span the top a eigen-directions; the rest stand for ranks a+1…k.
            "collapsed_latents": list(range(active + 1, latent_dim + 1)),
        }
        if learned:
            entry["sigma_sq_mle"] = sigma_sq_mle
        out.append(entry)
    return out


def linear_theory_rows(rows: list[dict], groups: dict[str, Trained], latent_dim: int) -> list[dict]:
    """Rows of linear_theory.json: every finished member, on the train and on the test split.

    `split` is the data the numbers are averaged over; the theory (eigenvalues λ, the pPCA W) is
    always the training split's, so "train" rows test the optimum itself and "test" rows how it
    generalises. Computed in float64.
    """
    out = []
    with jax.enable_x64(True):
        for group, trained in groups.items():
            eigvals = np.asarray(linear.data_spectrum(_flat(trained.problem.train_x))[0])
            group_rows = [r for r in rows if r["group"] == group]
            for i, row in enumerate(group_rows):
                if row["status"] != "ok":
                    continue
                params = jax.tree.map(lambda a, i=i: a[i], trained.params)
                out += _member_rows(trained.problem, params, row, eigvals, latent_dim)
    return out
