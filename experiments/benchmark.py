"""Speed of the train step, IWAE evaluation and σ sweep, against this machine's matmul ceiling.

    python experiments/benchmark.py                      # ~1.5 min on a quiet 2-core CPU
    python experiments/benchmark.py --quick --json b.json  # ~20-30 s, for CI smoke tests
    python experiments/benchmark.py --profile            # + experiments/profiling.py's tables
    python experiments/benchmark.py --model=conv --json c.json  # the conv VAE step, ~1 min
    python experiments/benchmark.py --run-sweep --sweep-workdir runs/sigma_sweep_timed --json s.json
                                # the default σ sweep end to end: ~12 min, see below

One process measures, in order:
  1. the ceiling: dense float32 2048×2048 matmul GFLOP/s (compiled, best of several reps);
  2. the real project step (`vae_jax.train.make_train_chunk`, jitted with the state donated, as
     `train_and_evaluate` runs it) for experiments/configs/default.py at batch 128 and 1024:
     ms/step, examples/s, achieved GFLOP/s and its fraction of the ceiling;
  3. IWAE evaluation throughput (`vae_jax.evaluate.make_evaluate`, K = 1000);
  4. an 8-member σ sweep as one program (`vae_jax.group.make_group_chunk`, members per slice as
     `vae_jax.sweep` picks for this backend) against 8 sequential single runs, compile included
     (experiments/sweep_speed.py);
  5. with --torch-python (or torch importable here) the same step in PyTorch
     (experiments/torch_reference.py, in a subprocess): "× PyTorch" in the step table.
Timings are best-of-reps after compilation (the machine is shared and noisy: read the ratios,
which come from the same process). Targets are printed as met / NOT met; nothing here fails.
`--quick` times a 3-step sweep, which compilation dominates: its sweep targets are printed as
"not judged in --quick" (null in the JSON).

`--run-sweep [CONFIG]` runs a whole sweep (default experiments/configs/sigma_sweep.py) in its own
process and `--sweep-workdir DIR` reports a finished one (experiments/sweep_speed.py): the wall
time split into compile, train, evaluate, sample quality and write, per group and in total, each
group's examples/s against the Gaussian group's, and the sweep-efficiency figure, the useful
matmul FLOPs over wall time × the ceiling probed in that run, with the targets met / NOT met.
Either skips the sections above.

`--model=conv` times only the conv VAE's train step at batch 128, in the form the project trains
it, with lax's convolutions, and in PyTorch, in the same JSON layout (experiments/conv_speed.py).

`--profile` adds experiments/profiling.py's tables (the step and the sweep with one piece changed,
and XLA flags) to the output and to the JSON's "profile" field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Run as a script: experiments/ shares measure.py with profiling.py.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from experiments import conv_speed  # noqa: E402
from experiments.measure import (  # noqa: E402
    bench_torch,
    bench_train_step,
    compile_timed,
    default_config,
    setup,
    torch_python,
)
from experiments.sweep_speed import DEFAULT_SWEEP, bench_sweep, whole_sweep  # noqa: E402
from vae_jax import evaluate  # noqa: E402
from vae_jax.flops import iwae_flops_per_example  # noqa: E402
from vae_jax.timing import Ceiling, best_and_median  # noqa: E402

TARGETS = {  # fraction of the matmul ceiling, and the sweep's time against sequential runs
    "train_128": 0.75,
    "train_1024": 0.90,
    "sweep_fraction": 0.70,
    "sweep_ratio": 0.75,
    "sweep_ratio_shared_compile": 1.0,  # against 8 sequential runs sharing one compile
    "iwae_fraction": 0.5,
    "vs_pytorch_128": 1.5,  # examples/s against the PyTorch step (--torch-python)
    "vs_pytorch_1024": 1.0,
    "compile_s": 10.0,
}
# A --quick sweep runs 3 steps: compilation and the first call's overhead make up most of its
# time, so neither its throughput nor its time against sequential runs says how the sweep runs.
NOT_JUDGED_IN_QUICK = ("sweep_fraction", "sweep_ratio", "sweep_ratio_shared_compile")
FRACTION_OF_CEILING = (
    "fraction of ceiling: the FLOP/s a computation achieves in its matrix multiplications,\n"
    "  divided by the FLOP/s of one large matrix multiplication on this machine; 100% would mean\n"
    "  no time goes to anything but matmuls (activations, likelihood, Adam, random numbers)"
)


@dataclasses.dataclass(frozen=True)
class Settings:
    matmul_reps: int
    train_steps: int  # steps per timed chunk; per-step time = chunk time / train_steps
    train_reps: int
    iwae_samples: int
    iwae_examples: int
    sweep_steps: int
    sweep_reps: int


FULL = Settings(
    matmul_reps=20,
    train_steps=50,
    train_reps=5,
    iwae_samples=1000,
    iwae_examples=160,
    sweep_steps=100,
    sweep_reps=2,
)
QUICK = Settings(
    matmul_reps=5,
    train_steps=5,
    train_reps=2,
    iwae_samples=100,
    iwae_examples=100,
    sweep_steps=3,
    sweep_reps=1,
)


# ----------------------------------------------------------------------------- 3. IWAE evaluation


def bench_iwae(config, settings: Settings, ceiling: Ceiling) -> dict:
    config, problem, _, state, hyper, _ = setup(config, config.train.batch_size)
    config.eval.iwae_samples = settings.iwae_samples
    # Whole evaluation batches only: `evaluate` pads the last batch, which would count as work.
    batch_size = evaluate.eval_batch_size(config, math.prod(problem.test_x.shape[1:]))
    num_examples = batch_size * max(1, settings.iwae_examples // batch_size)
    test_x = jnp.asarray(np.resize(problem.test_x, (num_examples, *problem.test_x.shape[1:])))
    evaluate_fn = jax.jit(
        evaluate.make_evaluate(
            evaluate.of_problem(problem),
            iwae_samples=settings.iwae_samples,
            batch_size=batch_size,
        )
    )
    rng = jax.random.key(2)
    log_sigma = hyper.log_sigma
    compiled, compile_s = compile_timed(evaluate_fn, state.params, test_x, log_sigma, rng)
    jax.block_until_ready(compiled(state.params, test_x, log_sigma, rng))
    local_ceiling = ceiling.probe()
    best, _ = best_and_median(lambda: compiled(state.params, test_x, log_sigma, rng), 2)
    local_ceiling = max(local_ceiling, ceiling.probe())
    flops = iwae_flops_per_example(config, math.prod(test_x.shape[1:]), settings.iwae_samples)
    examples_per_sec = test_x.shape[0] / best
    return {
        "examples_per_sec": examples_per_sec,
        "num_samples": settings.iwae_samples,
        "gflops": flops * examples_per_sec / 1e9,
        "fraction_of_ceiling": flops * examples_per_sec / 1e9 / local_ceiling,
        "compile_s": compile_s,
    }


def step_only(batch_size: int, settings: Settings) -> dict:
    ceiling = Ceiling()
    result = bench_train_step(
        default_config(), batch_size, settings.train_steps, settings.train_reps, ceiling
    )
    return {"matmul_gflops": result["ceiling_gflops"], **result}


# ----------------------------------------------------------------------------- report


def judge(name: str, ok: bool, quick: bool) -> bool | None:
    """Whether target `name` is met; None where a --quick run cannot judge it."""
    return None if quick and name in NOT_JUDGED_IN_QUICK else bool(ok)


def verdict(met: bool | None) -> str:
    return "not judged in --quick" if met is None else ("met" if met else "NOT met")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer reps/steps, K = 100 (<1 min)")
    parser.add_argument("--json", type=pathlib.Path, help="write the results here")
    parser.add_argument("--profile", action="store_true", help="also run experiments/profiling.py")
    parser.add_argument(
        "--torch-python",
        help="python of an environment with torch, for the PyTorch reference step "
        "(default: this interpreter if it has torch, else the reference is skipped)",
    )
    parser.add_argument(
        "--sweep-workdir",
        type=pathlib.Path,
        metavar="DIR",
        help="only report the finished sweep in DIR: its time split and sweep-efficiency figure "
        "(timing.json) and each group's examples/s (the other sections are not run)",
    )
    parser.add_argument(
        "--run-sweep",
        nargs="?",
        const=DEFAULT_SWEEP,
        metavar="CONFIG",
        help=f"first run the sweep CONFIG (default {DEFAULT_SWEEP}, the default σ sweep) into "
        "--sweep-workdir (default runs/sigma_sweep-timed-<time>), then report it",
    )
    parser.add_argument(
        "--model",
        choices=("mlp", "conv"),
        default="mlp",
        help="conv: only the conv VAE's train step, fast and plain forms and PyTorch's",
    )
    parser.add_argument("--step-only", type=int, metavar="BATCH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.step_only:
        print(json.dumps(step_only(args.step_only, settings)))
        return {}
    if args.model == "conv":
        results = conv_speed.bench_conv(
            train_steps=settings.train_steps,
            train_reps=settings.train_reps,
            matmul_reps=settings.matmul_reps,
            torch_python=torch_python(args.torch_python),
        )
        results["quick"] = args.quick
        conv_speed.report(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
            print(f"\nwrote {args.json}")
        return results
    if args.sweep_workdir or args.run_sweep:
        print(f"jax {jax.__version__}, {os.cpu_count()} CPUs")
        results = {"sweep_efficiency": whole_sweep(args.run_sweep, args.sweep_workdir)}
        results["load_average"] = list(os.getloadavg())
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
            print(f"\nwrote {args.json}")
        return results

    config = default_config()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")
    ceiling = Ceiling()
    ceiling_gflops, ceiling_median = ceiling.measure(settings.matmul_reps)
    print(
        f"ceiling: 2048² float32 matmul {ceiling_gflops:.1f} GFLOP/s "
        f"(median {ceiling_median:.1f}); each fraction below divides by the best matmul\n"
        "  probed between that section's own reps, as the load on a shared machine drifts"
    )
    print(FRACTION_OF_CEILING)

    steps = {}
    for batch_size in (128, 1024):
        steps[str(batch_size)] = bench_train_step(
            config, batch_size, settings.train_steps, settings.train_reps, ceiling
        )
    torch_python_exe = torch_python(args.torch_python)
    torch_steps = bench_torch(torch_python_exe, config, settings.train_steps, settings.train_reps)
    for batch_size, r in steps.items():
        r["vs_pytorch"] = (
            r["examples_per_sec"] / torch_steps[batch_size]["examples_per_sec"]
            if torch_steps
            else None
        )
    iwae = bench_iwae(config, settings, ceiling)
    sweep = bench_sweep(config, settings.sweep_steps, settings.sweep_reps, ceiling)
    compile_s = steps["128"]["compile_s"]
    met = {
        "train_128": steps["128"]["fraction_of_ceiling"] >= TARGETS["train_128"],
        "train_1024": steps["1024"]["fraction_of_ceiling"] >= TARGETS["train_1024"],
        "sweep_fraction": sweep["fraction_of_ceiling"] >= TARGETS["sweep_fraction"],
        "sweep_ratio": sweep["ratio"] <= TARGETS["sweep_ratio"],
        "sweep_ratio_shared_compile": sweep["ratio_shared_compile"]
        <= TARGETS["sweep_ratio_shared_compile"],
        "iwae_fraction": iwae["fraction_of_ceiling"] >= TARGETS["iwae_fraction"],
        "compile_s": compile_s < TARGETS["compile_s"],
    }
    for batch_size in ("128", "1024"):  # None (not judged) without the PyTorch reference
        ratio = steps[batch_size]["vs_pytorch"]
        name = f"vs_pytorch_{batch_size}"
        met[name] = None if ratio is None else ratio >= TARGETS[name]
    met = {name: None if ok is None else judge(name, ok, args.quick) for name, ok in met.items()}
    results = {
        "matmul_gflops": ceiling_gflops,
        "train_step": steps,
        "torch": torch_steps,
        "iwae": iwae,
        "sweep": sweep,
        "compile_s": compile_s,
        "quick": args.quick,
        "load_average": list(os.getloadavg()),
        "targets": {name: {"target": TARGETS[name], "met": met[name]} for name in TARGETS},
    }

    print("\ntrain step (experiments/configs/default.py, make_train_chunk, donated)")
    print(
        f"  {'batch':>6}{'ms/step':>10}{'median':>10}{'examples/s':>12}{'GFLOP/s':>10}"
        f"{'of ceiling':>12}{'ceiling':>9}{'compile s':>11}{'× PyTorch':>11}  target"
    )
    for batch_size in ("128", "1024"):
        r, name = steps[batch_size], f"train_{batch_size}"
        vs_torch = "-" if r["vs_pytorch"] is None else f"{r['vs_pytorch']:.2f}"
        print(
            f"  {batch_size:>6}{r['ms_per_step']:>10.2f}{r['ms_per_step_median']:>10.2f}"
            f"{r['examples_per_sec']:>12.0f}{r['gflops']:>10.1f}{r['fraction_of_ceiling']:>12.0%}"
            f"{r['ceiling_gflops']:>9.1f}{r['compile_s']:>11.2f}{vs_torch:>11}  "
            f"≥ {TARGETS[name]:.0%}: {verdict(met[name])}"
        )
    if torch_steps:
        print(f"  PyTorch {torch_steps['torch']}, the same step (at its best thread count):")
        for batch_size in ("128", "1024"):
            t, name = torch_steps[batch_size], f"vs_pytorch_{batch_size}"
            print(
                f"  {batch_size:>6}{t['ms_per_step']:>10.2f}{t['ms_per_step_median']:>10.2f}"
                f"{t['examples_per_sec']:>12.0f}  {t['threads']} thread(s); this project ≥ "
                f"{TARGETS[name]}× PyTorch: "
                f"{verdict(met[name])}"
            )
    print(
        f"\nIWAE evaluation (K = {iwae['num_samples']}): "
        f"{iwae['examples_per_sec']:.1f} examples/s, "
        f"{iwae['gflops']:.1f} GFLOP/s ({iwae['fraction_of_ceiling']:.0%} of ceiling; "
        f"≥ {TARGETS['iwae_fraction']:.0%}: {verdict(met['iwae_fraction'])})"
    )
    print(
        f"\nσ sweep, {sweep['members']} members × {sweep['steps']} steps, compile included, "
        f"{sweep['members_per_slice']} member(s) per slice: "
        f"one program {sweep['vmapped_s']:.2f} s (compile {sweep['compile_s']:.2f} s), "
        f"8 sequential single runs {sweep['sequential_s']:.2f} s, ratio {sweep['ratio']:.2f}; "
        f"sequential sharing one compile {sweep['sequential_shared_compile_s']:.2f} s, "
        f"ratio {sweep['ratio_shared_compile']:.2f}; after compilation {sweep['run_s']:.2f} s "
        f"against {sweep['sequential_shared_compile_run_s']:.2f} s, ratio "
        f"{sweep['run_ratio_shared_compile']:.2f} (what a sweep of many more steps tends to)"
    )
    print(
        f"  its run {sweep['gflops']:.1f} GFLOP/s = {sweep['fraction_of_ceiling']:.0%} of "
        f"ceiling (target ≥ {TARGETS['sweep_fraction']:.0%}: {verdict(met['sweep_fraction'])}); "
        f"ratio ≤ {TARGETS['sweep_ratio']}: {verdict(met['sweep_ratio'])}; ratio to the "
        f"shared compile ≤ {TARGETS['sweep_ratio_shared_compile']}: "
        f"{verdict(met['sweep_ratio_shared_compile'])}"
    )
    if args.quick:
        print(f"  ({sweep['steps']} steps: compilation dominates; run without --quick to judge)")
    print(
        f"\ncompile (first step, default config): {compile_s:.2f} s; "
        f"< {TARGETS['compile_s']:.0f} s: {verdict(met['compile_s'])}"
    )
    load = ", ".join(f"{v:.1f}" for v in results["load_average"])
    print(f"load average at the end (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")

    if args.profile:
        from experiments import profiling

        results["profile"] = profiling.run(config, ceiling, quick=args.quick)

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
