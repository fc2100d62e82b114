"""Tests for vae_jax.timing and vae_jax.flops: the phase split sums to the wall time and finds
compilations where they happen; the FLOP counts match the layers of the model Flax builds."""

import math
import time

import jax
import jax.numpy as jnp
import pytest
from conftest import load_config, tiny_config

from vae_jax import experiment, flops, loop, timing

# Expected values from the model Flax initialises: each Dense kernel [n_in, n_out] costs
# 2·n_in·n_out FLOPs per use, independent of vae_jax.flops' layer list.


def kernel_sizes(problem) -> dict[str, int]:
    """Sum of n_in·n_out over the encoder's and the decoder's Dense kernels."""
    x = jnp.zeros(problem.train_x.shape[1:], jnp.float32)
    params = problem.model.init(jax.random.key(0), x)["params"]
    sizes = {}
    for part in ("encoder", "decoder"):
        kernels = [leaf for path, leaf in _leaves(params[part]) if path[-1] == "kernel"]
        sizes[part] = sum(math.prod(k.shape) for k in kernels)
    return sizes


def _leaves(tree, path=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key), value


@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian_decoder"])
def test_train_step_flops_match_the_models_kernels(likelihood):
    config = tiny_config({"likelihood.name": likelihood, "model.hidden_sizes": (16, 8)})
    problem = experiment.build_problem(config)
    sizes = kernel_sizes(problem)  # gaussian_decoder: a log-σ map too, an output layer 2× wide
    result = flops.sweep_group_flops(problem, iwae_samples=4, num_members=3, trained_steps=20)
    forward = 2 * (sizes["encoder"] + sizes["decoder"])  # one z sample
    assert result["train_flops"] == 3 * forward * config.train.batch_size * 20 * 3


def test_evaluation_flops_count_every_pass_of_evaluate_member():
    config = tiny_config()  # digits: a validation split, the Gaussian refit on it
    problem = experiment.build_problem(config)
    sizes = kernel_sizes(problem)
    k = 4

    def forward(samples):
        return 2 * (sizes["encoder"] + samples * sizes["decoder"])

    n_train, n_val, n_test = len(problem.train_x), len(problem.val_x), len(problem.test_x)
    assert n_val > 0 and problem.likelihood.refits and not problem.likelihood.optimal_scale
    iwae = forward(k + 2) * (min(n_train, n_test) + n_val + n_test)  # as trained, 3 splits
    refit = forward(k + 2) * (n_val + n_test) + (forward(k) + forward(1)) * n_val
    result = flops.sweep_group_flops(problem, iwae_samples=k, num_members=2, trained_steps=0)
    assert result == {"train_flops": 0, "evaluate_flops": 2 * (iwae + refit)}


def test_default_config_counts_as_the_benchmark_documents():
    config = load_config()  # D = 784, hidden (512, 512), k = 32, one z sample
    encoder = 784 * 512 + 512 * 512 + 512 * 2 * 32
    decoder = 32 * 512 + 512 * 512 + 512 * 784
    assert 2 * (encoder + decoder) == 2_752_512  # the figure flops.py's docstring gives
    assert flops.forward_matmul_flops(config, 784) == 2_752_512
    assert flops.train_step_flops(config, 784, 128) == 3 * 2_752_512 * 128
    assert flops.iwae_flops_per_example(config, 784, 100) == 2 * (encoder + 102 * decoder)


def test_conv_models_are_counted_and_linear_ones_are_not():
    problem = experiment.build_problem(tiny_config({"model.kind": "conv"}))
    result = flops.sweep_group_flops(problem, iwae_samples=4, num_members=1, trained_steps=1)
    forward = flops.conv_forward_flops(
        event_shape=problem.train_x.shape[1:],
        hidden_sizes=tuple(problem.model.hidden_sizes),
        latent_dim=problem.model.latent_dim,
        num_samples=problem.num_samples,
    )
    assert result["train_flops"] == 3 * forward * problem.batch_size
    problem = experiment.build_problem(tiny_config({"model.kind": "linear"}))
    result = flops.sweep_group_flops(problem, iwae_samples=4, num_members=1, trained_steps=1)
    assert result == {"train_flops": None, "evaluate_flops": None}


def test_phases_sum_to_the_wall_time_and_compilation_is_carved_out():
    timer = timing.PhaseTimer()
    timer.mark("setup")
    time.sleep(0.05)
    timer.mark("train", "g")
    offset = time.time()  # a program no cache holds
    jax.block_until_ready(jax.jit(lambda x: jnp.sin(x) * offset)(jnp.ones(3)))
    timer.mark("evaluate", "g")
    time.sleep(0.05)
    timer.stop()
    split = timer.split()
    total, group = split["total"], split["groups"]["g"]
    phases = sum(total[f"{name}_s"] for name in timing.PHASES)
    assert phases + total["unaccounted_s"] == pytest.approx(total["wall_s"])
    assert 0 <= total["unaccounted_s"] < 0.01
    assert total["setup_s"] >= 0.05 and group["evaluate_s"] >= 0.05
    assert group["compile_in"]["train_s"] > 0 and group["compile_in"]["evaluate_s"] == 0
    assert total["compile_s"] == pytest.approx(group["compile_s"])
    assert total["compile_s"] == pytest.approx(sum(total["compile_in"].values()))


def test_a_stopped_timer_hears_no_more_compilations():
    timer = timing.PhaseTimer()
    timer.mark("train")
    timer.stop()
    spans = len(timer.compile_spans)
    offset = time.time()
    jax.block_until_ready(jax.jit(lambda x: x * offset)(jnp.ones(2)))
    assert len(timer.compile_spans) == spans


def test_nested_compile_spans_count_once():
    assert timing.union_of_spans([(0.0, 2.0), (0.5, 1.0), (1.5, 3.0), (4.0, 5.0)]) == [
        (0.0, 3.0),
        (4.0, 5.0),
    ]


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="unknown phase 'compile'"):
        timing.PhaseTimer().mark("compile")


def test_ceiling_probe_is_short_and_positive():
    t0 = time.perf_counter()
    ceiling = timing.probe_ceiling(seconds=0.05, size=256)
    assert time.perf_counter() - t0 < 5
    assert ceiling["reps"] >= 3 and ceiling["gflops"] >= ceiling["median_gflops"] > 0


def test_summary_efficiency_is_useful_flops_over_wall_times_limit():
    timer = timing.PhaseTimer()
    timer.mark("train", "g")
    timer.stop()
    timer.record("g", {"train_flops": 3e9, "evaluate_flops": 1e9, "members": 2})
    record = timing.summary(timer, {"gflops": 10.0, "size": 2048}, num_devices=2)
    wall = record["total"]["wall_s"]
    assert record["flops"] == {"train_flops": 3e9, "evaluate_flops": 1e9, "useful_flops": 4e9}
    assert record["seconds_at_limit"] == pytest.approx(4e9 / 20e9)
    assert record["efficiency"] == pytest.approx(4e9 / (wall * 20e9))
    assert record["groups"]["g"]["members"] == 2 and "train_s" in record["groups"]["g"]
    timer.record("g", {"train_flops": None})  # a model the count does not cover
    assert timing.summary(timer, {"gflops": 10.0}, num_devices=1)["efficiency"] is None


def test_group_record_reads_the_fit():
    problem = experiment.build_problem(tiny_config())
    fitted = loop.FitResult(None, None, train_seconds=2.0, trained_steps=20, compile_seconds=1.5)
    record = timing.group_record(problem, fitted, members=3, iwae_samples=4)
    assert record["examples_per_sec"] == pytest.approx(20 * problem.batch_size * 3 / 2.0)
    assert record["train_program_compile_s"] == 1.5 and record["members"] == 3
    assert (
        record["train_flops"]
        == flops.sweep_group_flops(problem, iwae_samples=4, num_members=3, trained_steps=20)[
            "train_flops"
        ]
    )
