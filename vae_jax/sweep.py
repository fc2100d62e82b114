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
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vae_jax import (
    console,
    evaluate,
    experiment,
    figure_data,
    linear_fit,
    loop,
    report,
    runner,
    sample_quality,
    timing,
    train,
    workdir,
)
from vae_jax import group as group_lib
from vae_jax import spec as spec_lib
from vae_jax.members import (
    Member,
    members_by_group,
    remedy_label,
    start_sigma,
)
from vae_jax.objective import (
    Problem,
    observation_log_sigma,
)
from vae_jax.sharding import (
    group_mesh,
    member_mesh,
    put,
    shard_members,
)
from vae_jax.spec import RunSpec


@dataclasses.dataclass
class GroupResult:
    """One structure group, trained and scored: what the report, the plots and the files need."""

    rows: list[dict]  # results.csv's rows of the group's members, in member order
    problem: Problem
    fitted: loop.FitResult  # stacked final state and hyper (padding copies included)
    outputs: dict  # `evaluate_member`'s per-split arrays, leading member axis
    eval_rngs: jax.Array  # each member's evaluation key
    images: dict[str, np.ndarray] | None = None  # sample_quality's uint8 image sets


def train_group(
    spec: RunSpec,
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
    gspec = spec.for_group(group)
    problem = problem or experiment.build_problem(gspec)
    gpath = path / "groups" / group
    gpath.mkdir(parents=True, exist_ok=True)
    mesh = group_mesh(mesh.devices, len(members))
    num_padded = math.ceil(len(members) / mesh.shape["members"]) * mesh.shape["members"]
    start = shard_members(group_lib.init_group(spec, problem, members, num_padded), mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    chunk = group_lib.make_group_chunk(
        problem,
        train.log_interval(gspec),
        mesh,
        members_per_slice=group_lib.members_per_slice(spec, mesh, num_padded),
    )
    stops = group_lib.GroupStops(members, group)
    trained = runner.fit_and_evaluate(
        gspec,
        problem,
        gpath,
        start,
        chunk,
        on_nonfinite=stops.handler(spec, problem, gpath),
        after_chunk=loop.make_scale_fit(
            gspec, problem, start[2], members=True, val_x=put(problem.val_x, replicated)
        ),
        splits=put(runner.device_splits(problem), replicated),
        train_x=put(problem.train_x, replicated),
        members=True,
        announce=lambda: (
            f"{group}: evaluating {len(members)} member(s) on the training, validation (σ refit) "
            f"and {problem.test_x.shape[0]} test examples (IWAE with K = {spec.eval.iwae_samples})"
        ),
        desc=group,
        timer=timer,
    )
    timer.record(
        group,
        timing.group_record(
            problem, trained.fitted, members=len(members), iwae_samples=spec.eval.iwae_samples
        ),
    )
    rows = group_rows(group, members, problem, trained, stops)
    result = GroupResult(rows, problem, trained.fitted, trained.outputs, trained.eval_rngs)
    if quality is not None:
        timer.mark("sample_quality", group)
        score_samples(quality, result, len(members))
    return result


def group_rows(
    group: str,
    members: list[Member],
    problem: Problem,
    trained: runner.Trained,
    stops: group_lib.GroupStops,
) -> list[dict[str, Any]]:
    """results.csv's rows of a trained group, in member order: the member, its status, its
    summary (not for a stopped member), steps and convergence where tracked, the group's speed."""
    fitted = trained.fitted
    stops.note_resumed(np.asarray(fitted.hyper.running))
    # A GECO member is scored with the σ its multiplier ended at.
    scored_sigma = np.exp(np.asarray(fitted.hyper.log_sigma, np.float64))
    final_step = int(np.max(np.asarray(fitted.state.step)))
    speeds = loop.speed_metrics(fitted, problem.batch_size * len(members))
    rows = []
    for i, member in enumerate(members):
        row = dataclasses.asdict(member)
        row["group"] = group
        row["data_model"] = problem.likelihood.data_model
        row["remedy"] = remedy_label(member)
        row["sigma_start"] = start_sigma(problem, member)
        if i in stops.stopped:
            row["status"] = "stopped: " + stops.stopped[i]
        else:
            row["status"] = "ok"
            outputs = jax.tree.map(lambda a, i=i: a[i], trained.outputs)
            summary = evaluate.summarize(outputs, problem)
            if problem.likelihood.fixed_sigma and "geco" in member.remedy.split("+"):
                summary["sigma"] = float(scored_sigma[i])
            elif problem.likelihood.fixed_sigma:
                summary["sigma"] = member.sigma  # exactly the config value, not exp(log σ)
            row.update(summary)
        if stops.tracks_convergence:
            row["train/steps"] = stops.converged.get(i, final_step)
            row["converged"] = i in stops.converged
        row["train/examples_per_sec"] = speeds["train/examples_per_sec"]
        row["train/steps_per_sec"] = speeds["train/steps_per_sec"]
        rows.append(row)
    return rows


def score_samples(quality: sample_quality.SweepQuality, result: GroupResult, count: int) -> None:
    """The group's sample metrics into its rows (None for a stopped member) and its images."""
    console.phase(
        f"{result.rows[0]['group']}: sample quality of {count} member(s) against "
        f"{quality.num_examples} test images (Fréchet distance at N and N → ∞, also in PCA-64, "
        "precision / recall, a bound on I(x; z))"
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
    config: RunSpec | ml_collections.ConfigDict,
    workdir_path: str | pathlib.Path,
    *,
    reevaluate: bool = False,
) -> list[dict]:
    """Run every group of the sweep, then write plots/, report.md, per_example.npz, samples.npz
    and results.csv; returns results.csv's rows. The public entry point of a sweep: a
    ConfigDict is parsed here, once.

    A workdir holding this sweep finished is left as it is and its stored rows are returned,
    unless `reevaluate` (then the final checkpoints are evaluated again, their speeds kept):
    `runner.run`, the steps a single run goes through too.
    """
    spec = config if isinstance(config, RunSpec) else spec_lib.parse(config)
    if spec.sweep.multihost:
        jax.distributed.initialize()
    path = pathlib.Path(workdir_path)
    layout = runner.Layout(
        results="results.csv",
        checkpoints=tuple(f"groups/{name}/checkpoints" for name in spec_lib.groups(spec)),
        read=workdir.read_results_csv,
        left_as_is=(
            "results.csv and report.md are left as they are; report: " + str(path / "report.md")
        ),
    )
    return runner.run(spec, path, layout, lambda: SweepRun(spec), reevaluate=reevaluate)


class SweepRun:
    """Every group: `runner.Job`'s train (each group one program, its rows) and write
    (per_example.npz, samples.npz, report.md and plots/, timing.json, results.csv)."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.timer = timing.PhaseTimer()  # timing.json: where the wall time goes
        self.timer.mark("setup")
        # Every group's data is checked before the workdir is touched, so a refused sweep
        # leaves nothing behind that would refuse the corrected command.
        names = spec_lib.groups(spec)
        self.problems = {name: experiment.build_problem(spec.for_group(name)) for name in names}
        self.groups = members_by_group(spec, self.problems[spec.likelihood.name].train_x)
        self.timer.mark("sample_quality")
        self.quality = sample_quality.for_sweep(spec)
        self.timer.mark("setup")
        self.mesh = member_mesh()
        for name, members in self.groups.items():
            if not linear_fit.applies(self.problems[name]):
                num_devices = group_mesh(self.mesh.devices, len(members)).shape["batch"]
                spec_lib.check_batch_split(self.problems[name].batch_size, num_devices)
        self.results: dict[str, GroupResult] = {}

    def train(self, path: pathlib.Path) -> list[dict]:
        for group, members in self.groups.items():
            self.results[group] = train_group(
                self.spec,
                path,
                group,
                members,
                self.mesh,
                self.problems[group],
                self.quality,
                self.timer,
            )
        return [row for result in self.results.values() for row in result.rows]

    def write(self, path: pathlib.Path, rows: list[dict]) -> None:
        self.timer.mark("write")
        console.phase(f"writing plots/, report.md, per_example.npz and results.csv in {path}")
        per_example = per_example_scores(self.results)
        workdir.write_per_example(path / "per_example.npz", per_example)
        images = figure_data.sweep_images([r.images for r in self.results.values()])
        if images is not None:
            workdir.write_arrays(path / "samples.npz", images)
        if jax.process_index() == 0:  # one host writes what the report draws from a model
            figure_data.write(
                path,
                rows,
                {
                    g: figure_data.Trained(r.problem, r.fitted.state.params, r.fitted.hyper)
                    for g, r in self.results.items()
                },
                latent_dim=self.spec.model.latent_dim,
                member_images_too=images is None,
                sample_floor=self.quality.floor if self.quality is not None else None,
            )
        workdir.write_json_atomic(path / "timing.json", self.timer.finish())
        workdir.write_results_csv(path / "results.csv", rows)  # it marks the sweep finished
        if jax.process_index() == 0:  # one host renders the report from the files
            report.render(path)


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
