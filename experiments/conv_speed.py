"""`benchmark.py --model=conv`: the conv VAE's train step against the matmul ceiling, in its fast
form (`vae_jax.conv`: patches and one matmul per layer, as the project trains it), in its plain
form (lax's convolutions, the same function) and in PyTorch (experiments/torch_reference.py
--model conv), side by side in one process.

The model is default.py's run with `model.kind='conv'`, hidden sizes (16, 32), 32 latents, on
mnist_5k (`measure.conv_config`); batch 128. Useful FLOPs are the plain layers' multiply-adds
(`vae_jax.flops.conv_forward_flops`, 0.81 GFLOP a step). The plain form is timed on fewer steps
(it is several times slower): its figure is there to show what the formulation buys.
"""

from __future__ import annotations

import os

import jax

from experiments.measure import (
    bench_torch,
    bench_train_step,
    conv_config,
    plain_convolutions,
)
from vae_jax.timing import Ceiling

BATCH = "128"
TARGETS = {  # fraction of the matmul ceiling in useful FLOPs; examples/s against PyTorch's
    "conv_train_128": 0.25,
    "conv_vs_pytorch_128": 2.0,
}


def bench_conv(
    *, train_steps: int, train_reps: int, matmul_reps: int, torch_python: str | None
) -> dict:
    """Ceiling, the fast and the plain conv step at batch 128, PyTorch's; ratios and targets."""
    config = conv_config()
    ceiling = Ceiling()
    ceiling_gflops, _ = ceiling.measure(matmul_reps)
    batch_size = int(BATCH)
    fast = bench_train_step(config, batch_size, train_steps, train_reps, ceiling)
    with plain_convolutions():
        plain = bench_train_step(
            config, batch_size, max(2, train_steps // 10), max(2, train_reps // 2), ceiling
        )
    torch_steps = bench_torch(
        torch_python, config, train_steps, train_reps, model="conv", batch_sizes=(batch_size,)
    )
    fast["vs_plain"] = fast["examples_per_sec"] / plain["examples_per_sec"]
    fast["vs_pytorch"] = (
        fast["examples_per_sec"] / torch_steps[BATCH]["examples_per_sec"] if torch_steps else None
    )
    met = {
        "conv_train_128": fast["fraction_of_ceiling"] >= TARGETS["conv_train_128"],
        "conv_vs_pytorch_128": None
        if fast["vs_pytorch"] is None
        else fast["vs_pytorch"] >= TARGETS["conv_vs_pytorch_128"],
    }
    return {
        "model": "conv",
        "config": {"hidden_sizes": list(config.model.hidden_sizes), "latent_dim": 32},
        "matmul_gflops": ceiling_gflops,
        "train_step": {BATCH: fast},
        "plain_step": {BATCH: plain},
        "torch": torch_steps,
        "compile_s": fast["compile_s"],
        "load_average": list(os.getloadavg()),
        "targets": {name: {"target": TARGETS[name], "met": met[name]} for name in TARGETS},
    }


def verdict(met: bool | None) -> str:
    return "not judged (no PyTorch)" if met is None else ("met" if met else "NOT met")


def report(results: dict) -> None:
    """The conv step table: JAX fast, JAX plain, PyTorch, and the targets."""
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")
    print(f"ceiling: 2048² float32 matmul {results['matmul_gflops']:.1f} GFLOP/s")
    print("\nconv VAE train step (hidden 16, 32; 32 latents; mnist_5k), batch 128")
    print(f"  {'':<26}{'ms/step':>10}{'examples/s':>12}{'GFLOP/s':>10}{'of ceiling':>12}")
    fast, plain = results["train_step"][BATCH], results["plain_step"][BATCH]
    for name, r in (("JAX, patches + one matmul", fast), ("JAX, lax convolutions", plain)):
        print(
            f"  {name:<26}{r['ms_per_step']:>10.2f}{r['examples_per_sec']:>12.0f}"
            f"{r['gflops']:>10.1f}{r['fraction_of_ceiling']:>12.0%}"
        )
    torch_steps = results["torch"]
    if torch_steps:
        t = torch_steps[BATCH]
        print(
            f"  {'PyTorch ' + torch_steps['torch']:<26}{t['ms_per_step']:>10.2f}"
            f"{t['examples_per_sec']:>12.0f}  ({t['threads']} thread(s))"
        )
    targets = results["targets"]
    print(
        f"\n  fast / plain: {fast['vs_plain']:.1f}×; fraction of ceiling ≥ "
        f"{TARGETS['conv_train_128']:.0%}: {verdict(targets['conv_train_128']['met'])}"
    )
    vs_torch = "-" if fast["vs_pytorch"] is None else f"{fast['vs_pytorch']:.2f}×"
    print(
        f"  × PyTorch: {vs_torch}; ≥ {TARGETS['conv_vs_pytorch_128']:.0f}×: "
        f"{verdict(targets['conv_vs_pytorch_128']['met'])}"
    )
    load = ", ".join(f"{v:.1f}" for v in results["load_average"])
    print(f"load average at the end (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")
