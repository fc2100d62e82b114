"""A sweep's members: who they are, which group (one vmapped program) each belongs to, which σ
the grid holds and which σ a member starts from. Pure bookkeeping on the config; the program that
trains them is `vae_jax.sweep`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax.numpy as jnp
import ml_collections
import numpy as np

from vae_jax import data, experiment, linear, validate
from vae_jax.errors import ConfigError
from vae_jax.objective import Problem, Remedy, remedy_from_config, sweep_remedies
from vae_jax.report.rows import implicit_sigmas


@dataclasses.dataclass(frozen=True)
class Member:
    likelihood: str
    sigma: float  # the config σ (used by the fixed-σ Gaussian only; others' σ reported after)
    seed: int
    beta: float
    learning_rate: float
    remedy: str = "none"  # the training objective: a name in objective.REMEDIES, or '+'-joined


# A reference family read as a remedy for a badly chosen fixed σ (results.csv's `remedy`).
FAMILY_REMEDIES = {
    "gaussian_learned": "learned_sigma",
    "gaussian_per_pixel": "per_pixel_sigma",
    "gaussian_optimal": "optimal_sigma",
}


def remedy_label(member: Member) -> str:
    family = FAMILY_REMEDIES.get(member.likelihood)
    if family is None:
        return member.remedy
    return family if member.remedy == "none" else f"{family}+{member.remedy}"


def members_by_group(config: ml_collections.ConfigDict) -> dict[str, list[Member]]:
    """The sweep's members grouped by structure: the main likelihood's σ grid, then references."""
    s = config.sweep
    sigmas = sigma_values(config)
    seeds = validate.positive_list(s.seeds, "sweep.seeds", integer=True)
    betas = validate.positive_list(s.get("beta") or [config.train.beta], "sweep.beta")
    rates = validate.positive_list(
        s.get("learning_rate") or [config.train.learning_rate], "sweep.learning_rate"
    )
    main = config.likelihood.name
    main_remedies, reference_remedy = sweep_remedies(config)
    groups = {
        main: [
            Member(main, sigma, seed, beta, lr, remedy)
            for sigma, remedy, seed, beta, lr in itertools.product(
                sigmas, main_remedies, seeds, betas, rates
            )
        ]
    }
    for name in s.get("references") or ():
        if name in groups:
            raise ConfigError(f"sweep.references lists {name!r} twice or as likelihood.name")
        groups[name] = [
            Member(name, config.likelihood.sigma, seed, beta, lr, reference_remedy)
            for seed, beta, lr in itertools.product(seeds, betas, rates)
        ]
    for name, members in groups.items():  # a remedy the family cannot take: refused here
        for remedy in dict.fromkeys(m.remedy for m in members):
            member_remedy(config, name, remedy)
    return groups


def member_remedy(config: ml_collections.ConfigDict, likelihood: str, remedy: str) -> Remedy:
    """The `Remedy` of a member of family `likelihood` trained with `remedy` (`sweep_remedies`)."""
    only = remedy if config.sweep.get("remedies") else None
    return remedy_from_config(config, likelihood=likelihood, only=only)


def sigma_values(config: ml_collections.ConfigDict) -> list[float]:
    """`sweep.sigma` (with `sweep.implicit_sigmas`, plus the σ that summed and mean MSE + KL
    imply for the loaded data, `implicit_sigmas`), or with `sweep.sigma_from_spectrum` a
    grid straddling the data spectrum (`vae_jax.linear.sigma_sq_grid_across_spectrum`).

    The spectrum is that of the examples the model trains on (`experiment.build_problem`: the
    training split less its validation examples).
    """
    if not config.sweep.get("sigma_from_spectrum"):
        sigmas = validate.positive_list(config.sweep.sigma, "sweep.sigma")
        if config.sweep.get("implicit_sigmas"):
            validate.one_of(config, "data.name", data.EMBEDDED + data.CATALOG)
            shape = data.event_shape(config.data.name)
            implicit = implicit_sigmas(math.prod(shape)).values()
            sigmas = sorted(set(sigmas) | {round(s, 6) for s in implicit})
        return sigmas
    x = experiment.build_problem(group_config(config, config.likelihood.name)).train_x
    eigvals, _, _ = linear.data_spectrum(jnp.asarray(x.reshape(len(x), -1)))
    grid = linear.sigma_sq_grid_across_spectrum(eigvals, config.model.latent_dim)
    return [float(v) for v in np.sqrt(np.asarray(grid))]


def group_config(config: ml_collections.ConfigDict, likelihood: str) -> ml_collections.ConfigDict:
    """The single-run config a group's members share (its likelihood; sweep fields dropped)."""
    c = ml_collections.ConfigDict(config.to_dict())
    if "sweep" in c:
        del c["sweep"]
    c.likelihood.name = likelihood
    return c


def start_sigma(problem: Problem, member: Member) -> float | None:
    """The σ training starts from: the config's fixed σ (GECO's λ₀ = D/(2σ²)), a learned
    scale's initial decoder std; None for other families."""
    if problem.likelihood.fixed_sigma:
        return member.sigma
    if problem.likelihood.learns_scale:
        return problem.model.sigma_init * problem.likelihood.std_factor
    return None
