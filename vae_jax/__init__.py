"""vae_jax: is "MSE + KL" a sound VAE objective? Exact likelihoods, σ sweeps, linear-VAE theory."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`vae_jax.score` (`vae_jax.scoring.score`) on first use: it loads jax, which a plain
    `import vae_jax` (e.g. for `vae_jax.conventions`) does not."""
    if name == "score":
        from vae_jax.scoring import score

        return score
    raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")
