"""Reproduce "Don't Blame the ELBO!" (Lucas et al. 2019) with trained, converged linear VAEs.

    python experiments/run.py --config=experiments/configs/linear_vae.py --workdir=runs/linear_vae
    python experiments/run.py --config=experiments/configs/linear_vae.py --config.data.name=digits
    python experiments/run.py --config=experiments/configs/linear_vae.py:lucas --workdir=runs/lucas

A linear VAE with a Gaussian decoder N(Wz + μ, σ²I) has the pPCA maximum-likelihood solution as
its ELBO optimum, so latent i collapses exactly when the data-covariance eigenvalue λ_i ≤ σ².
The σ² grid is read off the training data's spectrum (one σ² above λ_1, one in each gap between
λ_i and λ_{i+1}, one below λ_k; or `sweep.sigma` with `sweep.sigma_from_spectrum=False`), all
trained as one vmapped sweep, plus a learned-σ member whose σ² is compared with its MLE (the mean
of the discarded eigenvalues; learned on the training data, `likelihood.sigma_fit='gradient'`).
Each step is one closed-form coordinate-ascent sweep of the exact ELBO on the whole training set
(`vae_jax.linear_fit`), and each member stops once converged (`vae_jax.convergence`),
train.num_steps being the cap. report.md and linear_theory.json put
predicted and trained collapse, per-latent KL, rate and distortion next to the theory.

Default (ppca_synthetic, k = 6): 19 s wall clock on the 2-core CPU machine, quiet (load ≈ 1,
2026-11-25); all 8 members converge in 100–250 steps with the predicted
active units and a test ELBO equal to the analytic log-likelihood to 0.000%; learned σ² 0.0504133
against its MLE 0.0504125 (+0.0015%). The spectrum is that of the training split less the
`data.validation_fraction` it holds out.

`:lucas` is the check of Lucas et al.'s notebook: the first 1,000 training images of mnist_5k
exactly as `vae_jax.data.load_numpy("mnist_5k", "train")` returns them (not dequantised, none held
out for validation), k = 200 latents, σ learned. 28 s wall clock on the quiet machine (2 min 34 s
when it was shared); converges in 600 steps to a training-set ELBO of 940.9251 against the pPCA
maximum log-likelihood 940.9261 of those images, σ² 0.00215912 against its MLE 0.00215913 (rows
with split "train" in linear_theory.json, the learned-σ line of report.md).
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs import default

VARIANTS = ("lucas",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.data.name = "ppca_synthetic"  # ppca_synthetic | digits | mnist_5k
    config.data.dequantize = False  # the theory is about the data's own covariance
    # Train on the first N training examples only (None: all of them).
    config.data.train_subset = config_dict.placeholder(int)
    config.model.kind = "linear"
    config.model.latent_dim = 6  # k = the 6 signal directions of ppca_synthetic
    config.model.hidden_sizes = ()  # unused by the linear model
    config.likelihood.name = "gaussian"
    # The theory's σ: the MLE of the training data, which coordinate ascent fits in closed form.
    config.likelihood.sigma_fit = "gradient"
    # Every step sees the whole training set, so (data not dequantised) the objective has no
    # noise and each step is one closed-form coordinate-ascent sweep (`vae_jax.linear_fit`).
    config.train.full_batch = True
    config.train.num_steps = 5000  # a cap: each member stops once it has converged
    config.train.log_every = 50  # steps per chunk: also the window of the convergence test
    config.train.checkpoint_every = 1000

    config.train.convergence = ml_collections.ConfigDict()
    # A member has converged when over one chunk its objective moved by at most this fraction…
    config.train.convergence.objective_rtol = 1e-6
    # …and no latent's KL (mean over the training set) by more than this many nats.
    config.train.convergence.kl_atol = 1e-4
    config.eval.iwae_samples = 64

    config.sweep = ml_collections.ConfigDict()
    config.sweep.sigma_from_spectrum = True  # σ² straddling the training-data spectrum
    # With sigma_from_spectrum=False: the σ values (pixel units), e.g. '(0.5,0.2)'.
    config.sweep.sigma = config_dict.placeholder(tuple)
    config.sweep.seeds = (0,)
    config.sweep.references = ("gaussian_learned",)  # σ learned; compared with its MLE
    config.sweep.multihost = False  # call jax.distributed.initialize()
    # Members a slice of a group's program vmaps, slices run one after another in the program;
    # unset: every member in one vmap.
    config.sweep.members_per_slice = ml_collections.config_dict.placeholder(int)

    if arg == "lucas":
        config.data.name = "mnist_5k"
        config.data.train_subset = 1000
        config.data.validation_fraction = 0.0  # exactly those 1,000 images, none held out
        config.model.latent_dim = 200
        config.likelihood.name = "gaussian_learned"
        config.sweep.sigma_from_spectrum = False
        config.sweep.sigma = (1.0,)  # unused by a learned σ, which starts at likelihood.sigma_init
        config.sweep.references = ()
    elif arg is not None:
        raise ValueError(f"unknown variant {arg!r}; allowed: {', '.join(VARIANTS)}")
    return config
