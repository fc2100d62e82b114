"""The σ sweep on full-size Fashion-MNIST with the common small conv VAE.

    sudo apt-get install dataset-fashion-mnist     # once (docs/datasets.md)
    python experiments/run.py --config=experiments/configs/fashion_conv_sweep.py \
        --workdir=runs/fashion_conv_sweep
    python experiments/run.py --config=experiments/configs/fashion_conv_sweep.py:full   # GPU/TPU

The conv VAE of `vae_jax.models` with hidden_sizes (16, 32) and 32 latents: encoder Conv(16, 4×4,
stride 2, padding 1) → ReLU → Conv(32, 4×4, stride 2, padding 1) → ReLU → Dense(2·32); decoder
Dense(7·7·32) → ReLU → ConvTranspose(16) → ReLU → ConvTranspose(the likelihood's channels), every
transposed layer 4×4, stride 2, padding 1 (docs/speed.md has its step against PyTorch's). Data as
fashion_sigma_sweep.py: 55,000 / 5,000 / 10,000 images, dequantised; 3,000 Adam steps of batch
128 (7 passes); IWAE with K = 20.

Default, sized for about an hour on 2 CPU cores (measured: 51 min 38 s, 2026-12-07, with only
light niced work beside it; docs/results/fashion_conv_sweep/timing.json): 3 seeds; σ ∈ {0.0541,
0.126, 0.293}, the MLP sweep's grid points around its best on this data (0.126, chosen on
validation data), plus σ² = ½ (summed MSE + KL) and σ² = D/2 (mean MSE + KL); a σ fitted on
validation data (gaussian_learned), the continuous Bernoulli and the discretised logistic (the
families first on the 8-bit scale on mnist_5k). Cut, and why: the rest of the σ
grid (its ends only repeat collapse and the MLP sweep maps them), the per-pixel, optimal,
decoder-predicted, truncated, Laplace and Bernoulli families (each another vmapped program of
the same cost), and seeds 3 and 4. Of its time, training took 27 min 46 s (5,100–5,800 examples/s
summed over a group's members, against 7,261 for one model's step in docs/speed.md), evaluation
21 min 15 s and compilation 2 min 7 s.

`:full` is the whole grid of sigma_sweep.py, every family and 5 seeds (105 members) for a GPU or
TPU: an estimate of roughly 5× the default's work, unmeasured until run.
"""

import ml_collections

from experiments.configs import fashion_sigma_sweep, sigma_sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = fashion_sigma_sweep.get_config()
    config.model.kind = "conv"  # 4×4 stride-2 convolutions (padding 1), one per hidden size
    config.model.hidden_sizes = (16, 32)  # channels; 28×28 → 7×7
    config.model.latent_dim = 32
    config.eval.batch_size = 50  # members × K decoder passes of 14×14×16 activations per batch

    if arg == "full":
        config.sweep.sigma = sigma_sweep.sigma_grid(10)
        config.sweep.seeds = (0, 1, 2, 3, 4)
        config.sweep.references = sigma_sweep.REFERENCES
    elif arg:
        raise ValueError(f"unknown variant {arg!r}; allowed: full")
    else:
        # sigma_grid(10)'s points around the MLP's best; σ² = ½ and σ² = D/2 are added to these.
        config.sweep.sigma = tuple(sigma_sweep.sigma_grid(10)[2:5])
        config.sweep.seeds = (0, 1, 2)
        config.sweep.references = (
            "gaussian_learned",
            "continuous_bernoulli",
            "discretized_logistic",
        )
    return config
