"""Reproduce "Don't Blame the ELBO!" (Lucas et al. 2019) with trained linear VAEs.

    python experiments/run.py --config=experiments/configs/linear_vae.py --workdir=runs/linear_vae
    python experiments/run.py --config=experiments/configs/linear_vae.py --config.data.name=digits

A linear VAE with a Gaussian decoder N(Wz + μ, σ²I) has the pPCA maximum-likelihood solution as
its ELBO optimum, so latent i collapses exactly when the data-covariance eigenvalue λ_i ≤ σ².
The σ² grid is read off the training data's spectrum (one σ² above λ_1, one in each gap between
λ_i and λ_{i+1}, one below λ_k), all trained as one vmapped sweep, plus a learned-σ member whose σ²
is compared with its MLE (the mean of the discarded eigenvalues). report.md puts predicted and
trained collapse and the analytic log-likelihood next to the trained ELBO. ppca_synthetic
(default) takes about 25 s on an idle 2-core CPU (36 s of CPU time, dataset build included).
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg:  # choose the data with --config.data.name
        raise ValueError(f"unknown variant {arg!r}; linear_vae.py has none")
    config = default.get_config()
    config.data.name = "ppca_synthetic"  # ppca_synthetic | digits | mnist_5k
    config.data.dequantize = False  # the theory is about the data's own covariance
    config.model.kind = "linear"
    config.model.latent_dim = 6  # k = the 6 signal directions of ppca_synthetic
    config.model.hidden_sizes = ()  # unused by the linear model
    config.likelihood.name = "gaussian"
    config.train.num_steps = 4000
    config.train.batch_size = 256
    config.train.learning_rate = 3e-2
    config.train.lr_schedule = "cosine"  # decay to 1%: the theory is about the optimum
    config.train.log_every = 500
    config.train.checkpoint_every = 2000
    config.eval.iwae_samples = 64

    config.sweep = ml_collections.ConfigDict()
    config.sweep.sigma_from_spectrum = True  # σ² straddling the training-data spectrum
    config.sweep.seeds = (0,)
    config.sweep.references = ("gaussian_learned",)  # σ learned; compared with its MLE
    config.sweep.multihost = False  # call jax.distributed.initialize()
    # Members a slice of a group's program vmaps, slices run one after another in the program;
    # unset: the backend's measured default (1 on CPU, every member on GPU/TPU).
    config.sweep.members_per_slice = ml_collections.config_dict.placeholder(int)
    return config
