"""The default config's train step written in PyTorch: the reference `benchmark.py` compares with.

    /path/to/torch-env/bin/python experiments/torch_reference.py TRAIN.npy --batch-sizes 128 1024
    /path/to/torch-env/bin/python experiments/torch_reference.py TRAIN.npy --model conv

Imports torch and numpy only (no JAX, no vae_jax), so it runs in any environment that has torch;
`benchmark.py --torch-python PYTHON` runs it in a subprocess and reads the one JSON line it prints.
The step does the data work the project's step does: a batch gathered from the training set held in
memory with one permutation per epoch, dequantised with uniform noise, then the MLP VAE of
experiments/configs/default.py (784-512-512 encoder to 32 means and log-variances, the mirrored
decoder, tanh-approximated GELU as flax's `nn.gelu`), the Gaussian likelihood with σ = 0.1, the
analytic KL, Adam at 1e-3. `--model conv` swaps in the conv VAE of `vae_jax.models` (hidden
sizes 16, 32) on PyTorch's [N, C, H, W] layout: Conv2d(C, 16, 4, 2, 1) → ReLU → Conv2d(16, 32,
4, 2, 1) → ReLU → flatten → Linear(1568, 64); Linear(32, 1568) → ReLU → ConvTranspose2d(32, 16,
4, 2, 1) → ReLU → ConvTranspose2d(16, C, 4, 2, 1). Timing: best of `--reps` runs of `--steps`
steps, after a warm-up, at the best of 1 … cpu_count threads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from torch import nn

LATENT = 32
HIDDEN = (512, 512)
CONV_HIDDEN = (16, 32)
SIGMA = 0.1
NUM_BINS = 256


def gelu_stack(widths: list[int]) -> list[nn.Module]:
    pairs = zip(widths, widths[1:], strict=False)
    return [m for a, b in pairs for m in (nn.Linear(a, b), nn.GELU("tanh"))]


class VAE(nn.Module):
    """The MLP VAE on flat images [N, D]."""

    def __init__(self, image_shape: tuple[int, ...]):
        super().__init__()
        num_dims = math.prod(image_shape)
        self.encoder = nn.Sequential(
            *gelu_stack([num_dims, *HIDDEN]), nn.Linear(HIDDEN[-1], 2 * LATENT)
        )
        self.decoder = nn.Sequential(
            *gelu_stack([LATENT, *reversed(HIDDEN)]), nn.Linear(HIDDEN[0], num_dims)
        )

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mean, log_var = self.encoder(x).chunk(2, dim=-1)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        recon = self.decoder(z)
        dims = tuple(range(1, x.ndim))
        num_dims = math.prod(x.shape[1:])
        log_lik = -0.5 * ((x - recon) / SIGMA).square().sum(dims) - num_dims * (
            math.log(SIGMA) + 0.5 * math.log(2 * math.pi)
        )
        kl = 0.5 * (torch.expm1(log_var) - log_var + mean.square()).sum(-1)
        return -(log_lik - kl).mean()


class ConvVAE(VAE):
    """The conv VAE on images [N, C, H, W]: one 4×4 stride-2 layer per hidden size."""

    def __init__(self, image_shape: tuple[int, ...]):
        nn.Module.__init__(self)
        channels, height, width = image_shape
        first, second = CONV_HIDDEN
        flat = (second, height // 4, width // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, first, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(first, second, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(math.prod(flat), 2 * LATENT),
        )
        self.decoder = nn.Sequential(
            nn.Linear(LATENT, math.prod(flat)),
            nn.ReLU(),
            nn.Unflatten(1, flat),
            nn.ConvTranspose2d(second, first, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(first, channels, 4, 2, 1),
        )


def time_steps(model_class, train_x: torch.Tensor, batch_size: int, steps: int, reps: int) -> dict:
    torch.manual_seed(0)
    model = model_class(tuple(train_x.shape[1:]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps_per_epoch = train_x.shape[0] // batch_size
    state = {"step": 0, "perm": None}

    def step():
        position = state["step"] % steps_per_epoch
        if position == 0:
            state["perm"] = torch.randperm(train_x.shape[0])
        idx = state["perm"][position * batch_size : (position + 1) * batch_size]
        k = torch.round(train_x[idx] * (NUM_BINS - 1))
        x = (k + torch.rand_like(k)) / NUM_BINS
        optimizer.zero_grad(set_to_none=True)
        model.loss(x).backward()
        optimizer.step()
        state["step"] += 1

    for _ in range(steps):  # warm-up: allocator, Adam's state
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t0) / steps)
    best = min(times)
    return {
        "ms_per_step": best * 1e3,
        "ms_per_step_median": float(np.median(times)) * 1e3,
        "examples_per_sec": batch_size / best,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_npy", help="training images, [N, ...] floats in [0, 1]")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--model", choices=("mlp", "conv"), default="mlp")
    args = parser.parse_args()
    x = np.load(args.train_npy).astype(np.float32)
    if args.model == "conv":  # [N, H, W, C] → PyTorch's [N, C, H, W]
        model_class, train_x = (
            ConvVAE,
            torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
        )
    else:
        model_class, train_x = VAE, torch.from_numpy(x.reshape(len(x), -1))
    results = {}
    for batch_size in args.batch_sizes:
        # PyTorch's best thread count now: on a loaded machine its OpenMP threads spin-wait for
        # each other (measured 5x slower with 2 threads than with 1 at load 9 on 2 cores).
        timed = []
        for threads in range(1, (os.cpu_count() or 1) + 1):
            torch.set_num_threads(threads)
            timed.append(
                {
                    **time_steps(model_class, train_x, batch_size, args.steps, args.reps),
                    "threads": threads,
                }
            )
        results[str(batch_size)] = min(timed, key=lambda r: r["ms_per_step"])
    print(json.dumps({"torch": torch.__version__, **results}))


if __name__ == "__main__":
    main()
