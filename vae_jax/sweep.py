"""Many members, one program: a σ × seed (× β × learning-rate) sweep as ONE vmapped jit.

σ, β and the learning rate are arrays, so members that share a structure (same likelihood family,
same model) stack their TrainStates along a leading member axis and run `jax.vmap` of the very
train chunk a single run uses — one compilation per group, not per member. Members of another
structure (a learned σ, another family: `sweep.references`) form their own group, each one
vmapped program. With several devices the member axis is sharded over a ('members', 'batch')
`Mesh` (padded with inactive copies up to a multiple of the member-axis size); when a group has
fewer members than devices, the spare devices split each member's batch. On a multi-host TPU slice
the same program runs after `jax.distributed.initialize()` (`--config.sweep.multihost=True`).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vae_jax import (
    console,
    convergence,
    evaluate,
    experiment,
    figure_data,
    linear_fit,
    loop,
    report,
    sample_quality,
    timing,
    train,
    workdir,
)
from vae_jax import spec as spec_lib
from vae_jax.errors import NonFiniteError
from vae_jax.members import (
    Member,
    member_remedy,
    members_by_group,
    remedy_label,
    start_sigma,
)
from vae_jax.objective import (
    Problem,
    make_hyper,
    observation_log_sigma,
    scored_hyper,
)
from vae_jax.sharding import (
    group_mesh,
    in_slices,
    member_mesh,
    put,
    shard_members,
    slice_size,
    stack,
)
from vae_jax.spec import RunSpec


@dataclasses.dataclass
class GroupResult:
    """One structure group, trained and scored: what the report, the plots and the files need."""

    rows: list[dict]  # results.csv's rows of the group's members, in member order
    problem: Problem
    fitted: Any  # `loop.FitResult`: stacked final state and hyper (padding copies included)
    outputs: dict  # `evaluate_member`'s per-split arrays, leading member axis
    eval_rngs: jax.Array  # each member's evaluation key
    images: dict[str, np.ndarray] | None = None  # sample_quality's uint8 image sets


def make_group_chunk(
    problem: Problem,
    num_steps: int,
    mesh: Mesh | None = None,
    *,
    members_per_slice: int | None = None,
):
    """The sweep's program: the single run's train chunk, vmapped over stacked members.

    (state, hyper, rng) carry the member axis; the device-resident train set is shared.
    `loop.fit` jits it with the stacked state donated. With a mesh whose 'batch' axis has
    more than one device, each member's batch is split over it (`spmd_axis_name` puts the
    member axis in front of that constraint). `members_per_slice` (None: all at once) vmaps
    that many members at a time, the slices one after another inside the same program.
    """
    if linear_fit.applies(problem):  # whole-set steps: nothing to split over 'batch'
        return jax.vmap(linear_fit.make_chunk(problem, num_steps), in_axes=(0, None, 0, 0))
    batch_sharding, spmd_axis_name = None, None
    if mesh is not None and mesh.shape["batch"] > 1:
        spec_lib.check_batch_split(problem.batch_size, mesh.shape["batch"])
        batch_sharding = NamedSharding(mesh, PartitionSpec("batch"))
        spmd_axis_name = "members"
    chunk = train.make_train_chunk(problem, num_steps, batch_sharding=batch_sharding)
    vmapped = jax.vmap(chunk, in_axes=(0, None, 0, 0), spmd_axis_name=spmd_axis_name)
    return in_slices(chunk, vmapped, members_per_slice)


def members_per_slice(spec: RunSpec, mesh: Mesh, num_members: int):
    """`sweep.members_per_slice` for a group of `num_members` on `mesh` (None: one vmap of all),
    rounded down to a divisor of the member count; unset, every member in one vmap."""
    return slice_size(spec.sweep.members_per_slice, num_members, mesh)


def init_group(spec: RunSpec, problem, members: list[Member], num_padded: int):
    """Stacked TrainStates, Hyper and per-member rngs, exactly as single runs would make them.
    `spec` is the sweep's (`member_remedy` reads `sweep.remedies`)."""
    tx = train.make_optimizer(spec)
    padded = members + [members[-1]] * (num_padded - len(members))
    keys = [jax.random.split(jax.random.key(m.seed), 3) for m in padded]
    states = [train.create_train_state(problem, tx, k[0]) for k in keys]
    states = [
        s.replace(
            opt_state=_with_learning_rate(s.opt_state, m.learning_rate),
        )
        for s, m in zip(states, padded, strict=True)
    ]
    hypers = [make_hyper(m.sigma, m.beta, member_remedy(spec, m.remedy)) for m in padded]
    hypers = [h.replace(running=jnp.bool_(i < len(members))) for i, h in enumerate(hypers)]
    return (
        stack(states),
        stack(hypers),
        jnp.stack([k[1] for k in keys]),
        jnp.stack([k[2] for k in keys]),
    )


def _with_learning_rate(opt_state, learning_rate: float):
    hyperparams = dict(opt_state.hyperparams)
    hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    return opt_state._replace(hyperparams=hyperparams)


def make_nonfinite_handler(
    members: list[Member],
    group: str,
    stopped: dict[int, str],
    converged: dict[int, int] | None = None,
):
    """Stop members whose loss went non-finite: mark them inactive and remember why. Raises once
    no member is left active unless some converged (`convergence.make_handler`)."""

    def handle(step_metrics: dict[str, np.ndarray], first_step: int, hyper):
        active = np.array(console.fetch(hyper.running))
        for i, member in enumerate(members):
            if not active[i]:
                continue
            try:
                loop.check_finite(
                    {k: v[i] for k, v in step_metrics.items()},  # [members, steps]
                    first_step,
                    where=f"{group} member σ={member.sigma:g} seed={member.seed} "
                    f"β={member.beta:g} lr={member.learning_rate:g} remedy={member.remedy}: ",
                )
            except NonFiniteError as e:
                stopped[i] = str(e)
                print(f"stopped: {e}", file=sys.stderr, flush=True)
                active[i] = False
        if all(not active[i] for i in range(len(members))) and not converged:
            first = next(iter(stopped.values()), "non-finite loss")
            raise NonFiniteError(f"every member of group {group} stopped; first: {first}")
        return hyper.replace(running=put(active, hyper.running.sharding))

    return handle


def train_group(
    config: RunSpec | ml_collections.ConfigDict,
    path: pathlib.Path,
    group: str,
    members: list[Member],
    mesh: Mesh,
    problem: Problem | None = None,
    quality: sample_quality.SweepQuality | None = None,
    timer: timing.PhaseTimer | None = None,
) -> GroupResult:
    """Train one structure group as one vmapped (and sharded) program; per-member results, with
    the sample metrics where `quality` is given (`sample_quality.for_sweep`). `timer` (the
    sweep's) gets the group's phases and work."""
    timer = timer or timing.PhaseTimer()
    timer.mark("train", group)
    spec = spec_lib.of(config)
    gspec = spec.for_group(group)
    problem = problem or experiment.build_problem(gspec)
    gpath = path / "groups" / group
    gpath.mkdir(parents=True, exist_ok=True)
    mesh = group_mesh(mesh.devices, len(members))
    num_padded = math.ceil(len(members) / mesh.shape["members"]) * mesh.shape["members"]
    state, hyper, train_rngs, eval_rngs = init_group(spec, problem, members, num_padded)
    state, hyper, train_rngs, eval_rngs = shard_members((state, hyper, train_rngs, eval_rngs), mesh)
    train_x = put(problem.train_x, NamedSharding(mesh, PartitionSpec()))
    chunk = make_group_chunk(
        problem,
        train.log_interval(gspec),
        mesh,
        members_per_slice=members_per_slice(spec, mesh, num_padded),
    )
    stopped: dict[int, str] = {}
    converged: dict[int, int] = {}
    on_chunk = make_nonfinite_handler(members, group, stopped, converged)
    # A convergence test needs an objective without sampling noise.
    tolerance = spec.train.convergence
    deterministic = linear_fit.applies(problem)
    if tolerance is not None and deterministic:
        names = [f"{group} member σ={m.sigma:g} seed={m.seed}" for m in members]
        on_chunk = convergence.make_handler(on_chunk, names, tolerance, converged, gpath, put)
    fitted = loop.fit(
        gspec,
        gpath,
        chunk,
        state,
        hyper,
        train_x,
        train_rngs,
        on_nonfinite=on_chunk,
        after_chunk=loop.make_scale_fit(
            gspec,
            problem,
            train_rngs,
            members=True,
            val_x=put(problem.val_x, NamedSharding(mesh, PartitionSpec())),
        ),
        desc=group,
    )
    # A GECO member is scored with the σ its multiplier ended at.
    fitted.hyper = scored_hyper(problem, fitted.hyper, fitted.state.geco)
    active = np.asarray(console.fetch(fitted.hyper.running))
    scored_sigma = np.exp(np.asarray(console.fetch(fitted.hyper.log_sigma), np.float64))
    for i in range(len(members)):
        if not active[i] and i not in stopped and i not in converged:
            stopped[i] = "stopped before the last resume (non-finite loss)"
    final_step = int(np.max(console.fetch(fitted.state.step)))

    timer.mark("evaluate", group)
    console.phase(
        f"{group}: evaluating {len(members)} member(s) on the training, validation (σ refit) and "
        f"{problem.test_x.shape[0]} test examples (IWAE with K = {spec.eval.iwae_samples})"
    )
    evaluate_members = experiment.make_member_evaluation(spec, problem, members=True)
    splits = put(experiment.device_splits(problem), NamedSharding(mesh, PartitionSpec()))
    outputs, _ = console.fetch(
        evaluate_members(fitted.state.params, fitted.hyper, eval_rngs, *splits)
    )
    if jax.process_count() > 1:  # the report indexes members on the host
        fitted = dataclasses.replace(
            fitted, state=console.fetch(fitted.state), hyper=console.fetch(fitted.hyper)
        )
        eval_rngs = jax.random.wrap_key_data(console.fetch(jax.random.key_data(eval_rngs)))
    speeds = loop.speed_metrics(fitted, problem.batch_size * len(members))
    timer.record(
        group,
        timing.group_record(
            problem, fitted, members=len(members), iwae_samples=spec.eval.iwae_samples
        ),
    )
    rows = []
    for i, member in enumerate(members):
        row = dataclasses.asdict(member)
        row["group"] = group
        row["data_model"] = problem.likelihood.data_model
        row["remedy"] = remedy_label(member)
        row["sigma_start"] = start_sigma(problem, member)
        if i in stopped:
            row["status"] = "stopped: " + stopped[i]
        else:
            row["status"] = "ok"
            summary = evaluate.summarize(jax.tree.map(lambda a, i=i: a[i], outputs), problem)
            if problem.likelihood.fixed_sigma and "geco" in member.remedy.split("+"):
                summary["sigma"] = float(scored_sigma[i])
            elif problem.likelihood.fixed_sigma:
                summary["sigma"] = member.sigma  # exactly the config value, not exp(log σ)
            row.update(summary)
        if tolerance is not None and deterministic:
            row["train/steps"] = converged.get(i, final_step)
            row["converged"] = i in converged
        row["train/examples_per_sec"] = speeds["train/examples_per_sec"]
        row["train/steps_per_sec"] = speeds["train/steps_per_sec"]
        rows.append(row)
    result = GroupResult(rows, problem, fitted, outputs, eval_rngs)
    if quality is not None:
        timer.mark("sample_quality", group)
        score_samples(quality, result, len(members))
    return result


def score_samples(quality: sample_quality.SweepQuality, result: GroupResult, count: int) -> None:
    """The group's sample metrics into its rows (None for a stopped member) and its images."""
    console.phase(
        f"{result.rows[0]['group']}: sample quality of {count} member(s) against "
        f"{quality.num_examples} test images (Fréchet distance, precision / recall, rate split)"
    )
    params = jax.tree.map(lambda a: a[:count], console.fetch(result.fitted.state.params))
    hyper = jax.tree.map(lambda a: a[:count], console.fetch(result.fitted.hyper))
    log_sigma = jax.vmap(lambda p, h: observation_log_sigma(result.problem, p, h))(params, hyper)
    keys = jax.random.wrap_key_data(console.fetch(jax.random.key_data(result.eval_rngs))[:count])
    scored = sample_quality.score_members(quality, result.problem, params, log_sigma, keys)
    for row, extra in zip(result.rows, scored.rows(), strict=True):
        row.update(extra if row["status"] == "ok" else dict.fromkeys(extra))
    result.images = scored.images


def train_and_evaluate(
    config: RunSpec | ml_collections.ConfigDict, workdir_path: str, *, reevaluate: bool = False
) -> list[dict]:
    """Run every group of the sweep, then write plots/, report.md and results.csv.

    A workdir holding this sweep finished is left as it is and its stored rows are returned,
    unless `reevaluate` (then the final checkpoints are evaluated again, their speeds kept).
    """
    spec = spec_lib.of(config)
    if spec.sweep.multihost:
        jax.distributed.initialize()
    path = pathlib.Path(workdir_path)
    names = spec_lib.groups(spec)
    checkpoint_dirs = [f"groups/{name}/checkpoints" for name in names]
    previous = []
    if workdir.is_finished(spec, path, "results.csv", checkpoint_dirs):
        if not reevaluate:
            console.phase(
                f"{path} holds this sweep, already finished: results.csv and report.md are "
                f"left as they are (--reevaluate evaluates it again); report: {path / 'report.md'}"
            )
            return workdir.read_results_csv(path / "results.csv")
        previous = workdir.read_results_csv(path / "results.csv")
    timer = timing.PhaseTimer()  # timing.json: where the wall time goes
    timer.mark("setup")
    # Every group's data is checked before the workdir is touched, so a refused sweep leaves
    # nothing behind that would refuse the corrected command.
    problems = {name: experiment.build_problem(spec.for_group(name)) for name in names}
    groups = members_by_group(spec, problems[spec.likelihood.name].train_x)
    timer.mark("sample_quality")
    quality = sample_quality.for_sweep(spec)
    timer.mark("setup")
    mesh = member_mesh()
    for name, members in groups.items():
        if not linear_fit.applies(problems[name]):
            num_devices = group_mesh(mesh.devices, len(members)).shape["batch"]
            spec_lib.check_batch_split(problems[name].batch_size, num_devices)
    with workdir.prepare(spec, workdir_path) as path:  # locked until the sweep ends
        return _train_groups_and_report(
            spec, path, groups, problems, mesh, previous, quality, timer
        )


def per_example_scores(results: dict[str, GroupResult]) -> dict[str, np.ndarray]:
    """per_example.npz's arrays, [rows, examples] in results.csv's order: each member's IWAE
    NLL per test and validation image, as trained and refit; NaN where a member stopped or has
    no such score."""
    rows = [row for result in results.values() for row in result.rows]
    arrays = {}
    for key, split in workdir.PER_EXAMPLE.items():
        sizes = [r.outputs[split]["iwae"].shape[1] for r in results.values() if split in r.outputs]
        table = np.full((len(rows), max(sizes, default=0)), np.nan)
        index = 0
        for result in results.values():
            for i, row in enumerate(result.rows):
                if split in result.outputs and row["status"] == "ok":
                    table[index] = -np.asarray(result.outputs[split]["iwae"][i], np.float64)
                index += 1
        arrays[key] = table
    return arrays


def _train_groups_and_report(
    spec: RunSpec,
    path: pathlib.Path,
    groups: dict[str, list[Member]],
    problems: dict[str, Problem],
    mesh: Mesh,
    previous: list[dict[str, Any]],
    quality: sample_quality.SweepQuality | None,
    timer: timing.PhaseTimer,
) -> list[dict]:
    results = {
        group: train_group(spec, path, group, members, mesh, problems[group], quality, timer)
        for group, members in groups.items()
    }
    rows = [row for result in results.values() for row in result.rows]
    if previous and len(previous) == len(rows):  # re-evaluated: keep the measured speeds
        for row, old in zip(rows, previous, strict=True):
            for key in ("train/examples_per_sec", "train/steps_per_sec"):
                row[key] = old[key] if row[key] is None else row[key]
    timer.mark("write")
    console.phase(f"writing plots/, report.md, per_example.npz and results.csv in {path}")
    per_example = per_example_scores(results)
    workdir.write_per_example(path / "per_example.npz", per_example)
    images = figure_data.sweep_images([r.images for r in results.values()])
    if images is not None:
        workdir.write_arrays(path / "samples.npz", images)
    if jax.process_index() == 0:  # one host writes what the report draws from a model
        figure_data.write(
            path,
            rows,
            {
                g: figure_data.Trained(r.problem, r.fitted.state.params, r.fitted.hyper)
                for g, r in results.items()
            },
            latent_dim=spec.model.latent_dim,
            member_images_too=images is None,
            sample_floor=quality.floor if quality is not None else None,
        )
    workdir.write_json_atomic(path / "timing.json", timer.finish())
    workdir.write_results_csv(path / "results.csv", rows)  # it marks the sweep finished
    if jax.process_index() == 0:  # one host renders the report from the files
        report.render(path)
    return rows
