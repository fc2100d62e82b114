"""Training: TrainState, the jitted train step, the on-device epoch loop, evaluation, fit.

The pieces are pure functions of arrays so that `vae_jax.sweep` can stack many members and run
`jax.vmap` of the very same step:

  train_step(state, batch, hyper, rng) -> (state, metrics)      one optimiser step
  train_chunk(state, train_x, hyper, rng) -> (state, metrics)   `lax.scan` of steps; each step's
                                                                 batch is a pure function of
                                                                 (rng, step), so resuming from a
                                                                 checkpoint replays the same data
Anything a sweep varies (σ, β, learning rate, seed) is an array: σ and β in `Hyper`, the learning
rate inside the optimiser state (`optax.inject_hyperparams`), the seed in `rng`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.experimental import multihost_utils

from vae_jax import checkpoint, data, elbo, likelihoods, metrics, models, report, validate, workdir
from vae_jax.errors import ConfigError, NonFiniteError


@flax.struct.dataclass
class Hyper:
    """Per-member hyper-parameters that enter the step as arrays (vmappable)."""

    log_sigma: jax.Array  # log σ of a fixed-σ Gaussian decoder (ignored by other likelihoods)
    beta: jax.Array  # KL weight of the training objective
    active: jax.Array  # False once a sweep member is stopped (non-finite): its state is frozen


TrainState = train_state.TrainState


@dataclasses.dataclass(frozen=True)
class Problem:
    """Everything static about a run: data, model, likelihood and the step's settings."""

    model: models.VAE
    likelihood: likelihoods.Likelihood
    train_x: np.ndarray
    test_x: np.ndarray
    transform: str  # 'dequantize' | 'binarize' | 'none': what each step does to a batch
    num_bins: int  # pixel levels of the data (dequantisation and bits/dim); 256 for 8-bit
    batch_size: int
    num_samples: int


# ----------------------------------------------------------------------------- construction


def build_problem(config: ml_collections.ConfigDict) -> Problem:
    """Load the data and build the model the config describes (raises ConfigError/DataError)."""
    validate.check_config(config)
    spec = likelihoods.get_likelihood(config.likelihood.name)
    train_x = data.load_numpy(config.data.name, "train")
    test_x = data.load_numpy(config.data.name, "test")
    transform = "none"
    if spec.support == "binary":
        binarize = config.data.binarize
        if binarize == "fixed":
            train_x = data.fixed_binarize(train_x, config.seed)
            test_x = data.fixed_binarize(test_x, config.seed + 1)
        elif binarize == "dynamic":
            transform = "binarize"
            test_x = data.fixed_binarize(test_x, config.seed + 1)
        elif not (data.is_binary(train_x) and data.is_binary(test_x)):
            raise ConfigError(
                f"likelihood.name='{spec.name}' needs binary data but data.name="
                f"'{config.data.name}' has grey values; set data.binarize to 'dynamic' or 'fixed'"
            )
    elif spec.support in ("real", "unit") and config.data.dequantize:
        if config.data.name in data.PIXEL_DATASETS:
            transform = "dequantize"
    num_bins = data.NUM_BINS.get(config.data.name, 256)
    if spec.support == "discrete" and num_bins != 256:
        raise ConfigError(
            f"likelihood.name='{spec.name}' models 256 pixel levels but data.name="
            f"'{config.data.name}' has {num_bins}; use an 8-bit dataset (mnist_5k, mnist, ...)"
        )
    if config.train.batch_size > train_x.shape[0]:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} is larger than the "
            f"{train_x.shape[0]} training examples of data.name='{config.data.name}'"
        )
    model = models.VAE(
        kind=config.model.kind,
        latent_dim=config.model.latent_dim,
        event_shape=tuple(train_x.shape[1:]),
        likelihood=spec.name,
        hidden_sizes=tuple(config.model.hidden_sizes),
        sigma_floor=config.likelihood.sigma_floor,
        sigma_init=config.likelihood.sigma_init,
    )
    return Problem(
        model=model,
        likelihood=spec,
        train_x=train_x,
        test_x=test_x,
        transform=transform,
        batch_size=config.train.batch_size,
        num_samples=config.train.num_samples,
        num_bins=num_bins,
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with the learning rate as optimiser state, so a sweep can vary it per member.

    `train.lr_schedule='cosine'` multiplies it by a cosine decay to 1% over `train.num_steps`
    (the shape is shared by all members; the peak rate stays a per-member array).
    """
    if config.train.lr_schedule == "cosine":
        schedule = optax.cosine_decay_schedule(1.0, config.train.num_steps, alpha=0.01)
    else:
        schedule = optax.constant_schedule(1.0)

    def adam(learning_rate):
        return optax.chain(
            optax.scale_by_adam(), optax.scale_by_schedule(schedule), optax.scale(-learning_rate)
        )

    return optax.inject_hyperparams(adam)(learning_rate=config.train.learning_rate)


def create_train_state(
    problem: Problem, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    x = jnp.zeros(problem.train_x.shape[1:], jnp.float32)
    params = problem.model.init(rng, x)
    return TrainState.create(apply_fn=problem.model.apply, params=params, tx=tx)


def make_hyper(sigma: float, beta: float) -> Hyper:
    return Hyper(
        log_sigma=jnp.log(jnp.float32(sigma)), beta=jnp.float32(beta), active=jnp.bool_(True)
    )


# ----------------------------------------------------------------------------- the maths


def observation_log_sigma(problem: Problem, params: Any, hyper: Hyper) -> jax.Array:
    """The σ the likelihood uses: the config's (fixed), the model's (learned) or unused (0)."""
    scale = problem.likelihood.scale
    if scale == "fixed":
        return hyper.log_sigma
    if scale in ("shared", "per_pixel"):
        return problem.model.apply(params, method=models.VAE.learned_log_sigma)
    return jnp.zeros(())


def example_elbo(
    problem: Problem, params: Any, x: jax.Array, hyper: Hyper, rng: jax.Array, num_samples: int
) -> dict[str, jax.Array]:
    """ELBO terms of ONE example under the problem's model and likelihood (`vae_jax.elbo.elbo`)."""
    mean, log_var = problem.model.apply(params, x, method=models.VAE.encode)
    decode, log_likelihood = decoder_and_likelihood(problem, params, hyper)
    return elbo.elbo(
        rng, x, mean, log_var, decode, log_likelihood, num_samples=num_samples, beta=hyper.beta
    )


def decoder_and_likelihood(
    problem: Problem, params: Any, hyper: Hyper
) -> tuple[Callable, Callable]:
    """decode(z) -> out and log_likelihood(x, out) -> [], as `vae_jax.elbo` takes them."""
    log_sigma = observation_log_sigma(problem, params, hyper)
    decode = functools.partial(problem.model.apply, params, method=models.VAE.decode)
    return decode, lambda x, out: problem.likelihood.log_prob(x, out, log_sigma)


def transform_batch(problem: Problem, rng: jax.Array, batch: jax.Array) -> jax.Array:
    if problem.transform == "dequantize":
        return data.dequantize(rng, batch, num_bins=problem.num_bins)
    if problem.transform == "binarize":
        return data.binarize(rng, batch)
    return batch


def make_train_step(problem: Problem, *, batch_sharding: Any = None) -> Callable:
    """train_step(state, batch, hyper, rng) -> (state, metrics); pure, jit/vmap it.

    `batch_sharding` (a `NamedSharding` over a 'batch' mesh axis) splits the batch's examples
    across devices, for sweeps with fewer members than devices (`vae_jax.sweep`).
    """

    def train_step(state: TrainState, batch: jax.Array, hyper: Hyper, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        data_rng, sample_rng = jax.random.split(rng)
        x = transform_batch(problem, data_rng, batch)
        if batch_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, batch_sharding)
        sample_rngs = jax.random.split(sample_rng, x.shape[0])

        def loss_fn(params):
            per_example = jax.vmap(
                lambda x, r: example_elbo(problem, params, x, hyper, r, problem.num_samples)
            )(x, sample_rngs)
            return -jnp.mean(per_example["objective"]), per_example

        grads, per_example = jax.grad(loss_fn, has_aux=True)(state.params)
        step_metrics = {
            "loss": -jnp.mean(per_example["objective"]),
            "elbo": jnp.mean(per_example["elbo"]),
            "recon": jnp.mean(per_example["recon"]),
            "kl": jnp.mean(per_example["kl"]),
        }
        # A non-finite step (or a stopped member) leaves the parameters at their last good
        # values, so a sweep's other members go on; the host sees the metric and stops the run
        # or the member for good (its optimiser state is then never used again). Masking the
        # updates, not the whole state, fuses into the parameter update: selecting over params
        # and both Adam moments cost 8% of a batch-128 step.
        keep = hyper.active & jnp.isfinite(step_metrics["loss"])
        keep &= jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: jnp.where(keep, u, 0.0), updates)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        return new_state, step_metrics

    return train_step


def make_train_chunk(problem: Problem, num_steps: int, *, batch_sharding: Any = None) -> Callable:
    """train_chunk(state, train_x, hyper, rng): `num_steps` steps as one on-device `lax.scan`.

    The batch of step s is rows perm_e[(s mod S)·B : ...] of the device-resident train set, with
    perm_e a permutation drawn from (rng, epoch e = s // S): no host transfer in the loop, and
    the data order depends only on the seed and the step number.
    """
    train_step = make_train_step(problem, batch_sharding=batch_sharding)
    batch_size = problem.batch_size

    def train_chunk(state: TrainState, train_x: jax.Array, hyper: Hyper, rng: jax.Array):
        perm_rng, step_rng = jax.random.split(rng)
        num_examples = train_x.shape[0]
        steps_per_epoch = num_examples // batch_size
        # The permutations of every epoch this chunk touches, drawn once up front: a
        # permutation per step cost ~1.6 ms (17% of a batch-128 step, experiments/benchmark.py
        # --profile) and gives the very same batches.
        first_epoch = state.step // steps_per_epoch
        epochs = first_epoch + jnp.arange(num_steps // steps_per_epoch + 2)
        perms = jax.vmap(
            lambda e: jax.random.permutation(jax.random.fold_in(perm_rng, e), num_examples)
        )(epochs)

        def body(state, _):
            epoch, position = jnp.divmod(state.step, steps_per_epoch)
            perm = perms[epoch - first_epoch]
            idx = jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)
            state, step_metrics = train_step(state, train_x[idx], hyper, step_rng)
            return state, step_metrics

        return jax.lax.scan(body, state, length=num_steps)

    return train_chunk


def make_evaluate(problem: Problem, *, iwae_samples: int, batch_size: int) -> Callable:
    """evaluate(params, test_x, hyper, rng) -> per-example arrays over the test set (jit it)."""

    def one_example(params, x, hyper, rng):
        transform_rng, elbo_rng, iwae_rng = jax.random.split(rng, 3)
        x = transform_batch(problem, transform_rng, x)
        terms = example_elbo(problem, params, x, hyper, elbo_rng, 1)
        mean, log_var = problem.model.apply(params, x, method=models.VAE.encode)
        log_sigma = observation_log_sigma(problem, params, hyper)
        out = problem.model.apply(params, mean, method=models.VAE.decode)
        recon = problem.likelihood.mean(out, log_sigma)
        decode, log_likelihood = decoder_and_likelihood(problem, params, hyper)
        iwae = elbo.iwae_bound(
            iwae_rng, x, mean, log_var, decode, log_likelihood, num_samples=iwae_samples
        )
        sq_err = jnp.sum((x - recon) ** 2)
        return {
            "elbo": terms["elbo"],
            "recon": terms["recon"],
            "kl": terms["kl"],
            "kl_per_latent": terms["kl_per_latent"],
            "posterior_mean": mean,
            "iwae": iwae,
            "sq_err": sq_err,
            "psnr": metrics.psnr(x, recon),
            "log_sigma": jnp.mean(_reported_log_sigma(problem, log_sigma, out, x, recon)),
        }

    def evaluate(params, test_x, hyper, rng):
        n = test_x.shape[0]
        num_batches = -(-n // batch_size)
        padded = jnp.concatenate(
            [test_x, jnp.zeros((num_batches * batch_size - n, *test_x.shape[1:]), test_x.dtype)]
        )
        rngs = jax.random.split(rng, num_batches * batch_size)
        batches = padded.reshape(num_batches, batch_size, *test_x.shape[1:])
        rngs = rngs.reshape(num_batches, batch_size, *rngs.shape[1:])
        per_batch = jax.lax.map(
            lambda b: jax.vmap(one_example, in_axes=(None, 0, None, 0))(params, b[0], hyper, b[1]),
            (batches, rngs),
        )
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], per_batch)

    return evaluate


def _reported_log_sigma(problem, log_sigma, out, x, recon):
    scale = problem.likelihood.scale
    if scale == "decoder":
        return out[1]
    if scale == "optimal":
        return 0.5 * jnp.log(jnp.maximum(jnp.mean((x - recon) ** 2), 1e-6))
    return log_sigma


def summarize(per_example: dict[str, np.ndarray], problem: Problem) -> dict[str, float | None]:
    """Final test metrics (DESIGN.md keys) from `evaluate`'s per-example arrays."""
    num_dims = math.prod(problem.test_x.shape[1:])
    iwae_nll = -float(np.mean(per_example["iwae"]))
    scale = problem.likelihood.scale
    return {
        "test/elbo": float(np.mean(per_example["elbo"])),
        "test/recon_log_prob": float(np.mean(per_example["recon"])),
        "test/recon_mse": float(np.mean(per_example["sq_err"]) / num_dims),
        "test/kl": float(np.mean(per_example["kl"])),
        "test/active_units": int(metrics.active_units(per_example["posterior_mean"])),
        "test/collapsed_fraction": float(metrics.collapsed_fraction(per_example["kl_per_latent"])),
        "test/iwae_nll": iwae_nll,
        "test/bits_per_dim": float(
            metrics.bits_per_dim(
                iwae_nll,
                num_dims,
                discrete=problem.likelihood.support in ("binary", "discrete"),
                num_bins=problem.num_bins,
            )
        ),
        "test/psnr": float(np.mean(per_example["psnr"])),
        "sigma": None if scale == "none" else float(np.exp(np.mean(per_example["log_sigma"]))),
    }


# ----------------------------------------------------------------------------- the host loop


class _StopRequested:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next chunk boundary."""

    def __init__(self):
        self.signal: int | None = None

    def __enter__(self):
        self._previous = {
            s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)
        }
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Preempted(Exception):
    """Raised after a SIGTERM/SIGINT once the state is checkpointed."""

    def __init__(self, message: str, signal: int):
        super().__init__(message)
        self.signal = signal


def check_finite(step_metrics: dict[str, np.ndarray], first_step: int, where: str = "") -> None:
    """Raise NonFiniteError naming the first step and term whose value is not finite."""
    bad = ~np.isfinite(step_metrics["loss"])
    if not bad.any():
        return
    i = int(np.argmax(bad))
    terms = [t for t in ("recon", "kl") if not np.isfinite(step_metrics[t][i])]
    raise NonFiniteError(
        f"{where}non-finite loss at step {first_step + i + 1} in the "
        f"{' and '.join(terms) or 'gradient'} term; the last good checkpoint is kept "
        "(try a smaller train.learning_rate or a larger likelihood.sigma_floor)"
    )


def log_interval(config: ml_collections.ConfigDict) -> int:
    return math.gcd(config.train.log_every, config.train.num_steps)


def progress_bar(total: int, initial: int, desc: str):
    import tqdm

    return tqdm.tqdm(
        total=total, initial=initial, desc=desc, disable=not sys.stderr.isatty(), leave=False
    )


def fetch(tree: Any) -> Any:
    """Device arrays → host numpy. On a multi-host slice every process gets the whole global
    array (`process_allgather`), since a sharded array is not addressable from one host."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


@dataclasses.dataclass
class FitResult:
    state: Any
    hyper: Hyper
    train_seconds: float  # wall time of the chunks this process ran, compilation excluded
    trained_steps: int  # steps this process ran (0 when it only resumed a finished run)
    compile_seconds: float


def fit(
    config: ml_collections.ConfigDict,
    path: pathlib.Path,
    chunk_fn: Callable,
    state: Any,
    hyper: Hyper,
    train_x: jax.Array,
    train_rng: jax.Array,
    *,
    on_nonfinite: Callable[[dict[str, np.ndarray], int, Hyper], Hyper],
    desc: str = "train",
) -> FitResult:
    """The host loop shared by single runs and sweeps: resume, run chunks, log, checkpoint.

    `chunk_fn(state, train_x, hyper, rng) -> (state, per-step metrics)` runs `log_interval`
    steps on device; `state` and `hyper` may carry a leading member axis. The checkpoint holds
    the state and `hyper` (whose `active` mask records stopped sweep members). After each chunk
    `on_nonfinite(metrics, first_step, hyper)` raises (single run) or returns `hyper` with the bad
    members made inactive (sweep). SIGTERM/SIGINT checkpoint and raise `Preempted`.
    """
    with contextlib.closing(checkpoint.Checkpoints(path / "checkpoints")) as ckpt:
        restored = ckpt.restore_latest({"state": _saveable(state), "hyper": hyper})
        if restored is not None:
            state = _restore_into(state, restored[1]["state"])
            hyper = restored[1]["hyper"]
        step = int(np.max(fetch(state.step)))
        workdir.truncate_metrics(path / "metrics.jsonl", step)

        t0 = time.perf_counter()
        chunk = jax.jit(chunk_fn, donate_argnums=0)
        chunk = chunk.lower(state, train_x, hyper, train_rng).compile()
        compile_seconds = time.perf_counter() - t0

        chunk_steps = log_interval(config)
        train_seconds, trained_steps = 0.0, 0
        bar = progress_bar(config.train.num_steps, step, desc)
        with contextlib.closing(bar), _StopRequested() as stop:
            while step < config.train.num_steps:
                t0 = time.perf_counter()
                state, step_metrics = chunk(state, train_x, hyper, train_rng)
                step_metrics = fetch(step_metrics)
                elapsed = time.perf_counter() - t0
                hyper = on_nonfinite(step_metrics, step, hyper)
                train_seconds += elapsed
                trained_steps += chunk_steps
                step += chunk_steps
                # Mean over the chunk's steps (the last axis): a number, or one per sweep member.
                record = {k: np.mean(v, axis=-1).tolist() for k, v in step_metrics.items()}
                record.update(step=step, steps_per_sec=chunk_steps / elapsed)
                workdir.append_jsonl(path / "metrics.jsonl", record)
                bar.update(chunk_steps)
                last = step == config.train.num_steps
                if step % config.train.checkpoint_every == 0 or last or stop.signal:
                    ckpt.save(step, {"state": _saveable(state), "hyper": hyper})
                if stop.signal is not None:
                    raise Preempted(
                        f"stopped by signal {stop.signal} at step {step}; checkpoint saved in "
                        f"{ckpt.directory}. Resume with the same command and --workdir={path}",
                        stop.signal,
                    )
    return FitResult(state, hyper, train_seconds, trained_steps, compile_seconds)


def speed_metrics(fit_result: FitResult, batch_size: int) -> dict[str, float | None]:
    seconds, steps = fit_result.train_seconds, fit_result.trained_steps
    return {
        "train/steps_per_sec": steps / seconds if steps else None,
        "train/examples_per_sec": steps * batch_size / seconds if steps else None,
        "train/compile_s": fit_result.compile_seconds,
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir_path: str) -> dict[str, Any]:
    """Train one model as the config says, evaluate it, write the workdir; returns results."""
    if config.debug_nans:
        jax.config.update("jax_debug_nans", True)
    problem = build_problem(config)
    path = workdir.prepare(config, workdir_path)
    init_rng, train_rng, eval_rng = jax.random.split(jax.random.key(config.seed), 3)
    state = create_train_state(problem, make_optimizer(config), init_rng)

    def raise_nonfinite(step_metrics, first_step, hyper):
        check_finite(step_metrics, first_step)
        return hyper

    hyper = make_hyper(config.likelihood.sigma, config.train.beta)
    fitted = fit(
        config,
        path,
        make_train_chunk(problem, log_interval(config)),
        state,
        hyper,
        jnp.asarray(problem.train_x),
        train_rng,
        on_nonfinite=raise_nonfinite,
    )
    evaluate = jax.jit(
        make_evaluate(
            problem, iwae_samples=config.eval.iwae_samples, batch_size=eval_batch_size(config)
        )
    )
    params = fitted.state.params
    hyper = fitted.hyper
    per_example = fetch(evaluate(params, jnp.asarray(problem.test_x), hyper, eval_rng))
    results = summarize(per_example, problem)
    results.update(speed_metrics(fitted, config.train.batch_size))
    results["step"] = int(fitted.state.step)
    workdir.write_json_atomic(path / "results.json", results)
    report.single_run_plots(path, problem, params, hyper, per_example, eval_rng)
    return results


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """Examples per evaluation batch: keeps K·batch decoder outputs to ~16M floats."""
    return max(1, min(config.eval.batch_size, (1 << 24) // (config.eval.iwae_samples * 1024)))


def _saveable(state: TrainState) -> dict[str, Any]:
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def _restore_into(state: TrainState, tree: dict[str, Any]) -> TrainState:
    return state.replace(params=tree["params"], opt_state=tree["opt_state"], step=tree["step"])
