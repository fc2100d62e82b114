"""The default config's train step written in PyTorch: the reference `benchmark.py` compares with.

    /path/to/torch-env/bin/python experiments/torch_reference.py TRAIN.npy --batch-sizes 128 1024

Imports torch and numpy only (no JAX, no vae_jax), so it runs in any environment that has torch;
`benchmark.py --torch-python PYTHON` runs it in a subprocess and reads the one JSON line it prints.
The step does the data work the project's step does: a batch gathered from the training set held in
memory with one permutation per epoch, dequantised with uniform noise, then the MLP VAE of
experiments/configs/default.py (784-512-512 encoder to 32 means and log-variances, the mirrored
decoder, tanh-approximated GELU as flax's `nn.gelu`), the Gaussian likelihood with σ = 0.1, the
analytic KL, Adam at 1e-3. Timing: best of `--reps` runs of `--steps` steps, after a warm-up, at
the best of 1 … cpu_count threads.
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
SIGMA = 0.1
NUM_BINS = 256


def gelu_stack(widths: list[int]) -> list[nn.Module]:
    pairs = zip(widths, widths[1:], strict=False)
    return [m for a, b in pairs for m in (nn.Linear(a, b), nn.GELU("tanh"))]


class VAE(nn.Module):
    def __init__(self, num_dims: int):
        super().__init__()
        self.encoder = nn.Sequential(*gelu_stack([num_dims, *HIDDEN]))
        self.heads = nn.Linear(HIDDEN[-1], 2 * LATENT)
        self.decoder = nn.Sequential(
            *gelu_stack([LATENT, *reversed(HIDDEN)]), nn.Linear(HIDDEN[0], num_dims)
        )

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mean, log_var = self.heads(self.encoder(x)).chunk(2, dim=-1)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        recon = self.decoder(z)
        num_dims = x.shape[-1]
        log_lik = -0.5 * ((x - recon) / SIGMA).square().sum(-1) - num_dims * (
            math.log(SIGMA) + 0.5 * math.log(2 * math.pi)
        )
        kl = 0.5 * (torch.expm1(log_var) - log_var + mean.square()).sum(-1)
        return -(log_lik - kl).mean()


def time_steps(train_x: torch.Tensor, batch_size: int, steps: int, reps: int) -> dict:
    torch.manual_seed(0)
    model = VAE(train_x.shape[1])
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
    args = parser.parse_args()
    x = np.load(args.train_npy).astype(np.float32)
    train_x = torch.from_numpy(x.reshape(len(x), -1))
    results = {}
    for batch_size in args.batch_sizes:
        # PyTorch's best thread count now: on a loaded machine its OpenMP threads spin-wait for
        # each other (measured 5x slower with 2 threads than with 1 at load 9 on 2 cores).
        timed = []
        for threads in range(1, (os.cpu_count() or 1) + 1):
            torch.set_num_threads(threads)
            timed.append(
                {**time_steps(train_x, batch_size, args.steps, args.reps), "threads": threads}
            )
        results[str(batch_size)] = min(timed, key=lambda r: r["ms_per_step"])
    print(json.dumps({"torch": torch.__version__, **results}))


if __name__ == "__main__":
    main()
