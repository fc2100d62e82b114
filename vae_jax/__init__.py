"""vae_jax: is "MSE + KL" a sound VAE objective? Exact likelihoods, σ sweeps, linear-VAE theory."""

__version__ = "0.1.0"
