"""A sweep's members: who they are, which group (one vmapped program) each belongs to, which σ
the grid holds and which σ a member starts from. Pure bookkeeping on the config; the program that
trains them is `vae_jax.sweep`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax.numpy as jnp
import numpy as np

from vae_jax import data, experiment, linear
from vae_jax.likelihoods import implicit_sigmas
from vae_jax.objective import Problem, Remedy, remedy_of
from vae_jax.spec import RunSpec


@dataclasses.dataclass(frozen=True)
class Member:
    likelihood: str
    sigma: float  # the config σ (used by the fixed-σ Gaussian only; others' σ reported after)
    seed: int
    beta: float
    learning_rate: float
    remedy: str = "none"  # the training objective: a name in spec.REMEDIES, or '+'-joined


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


def members_by_group(spec: RunSpec, train_x: np.ndarray | None = None) -> dict[str, list[Member]]:
    """The sweep's members grouped by structure: the main likelihood's σ grid, then references.
    `train_x`: the main group's training examples, which `sweep.sigma_from_spectrum` reads."""
    s = spec.sweep
    sigmas = sigma_values(spec, train_x)
    betas = s.beta or (spec.train.beta,)
    rates = s.learning_rate or (spec.train.learning_rate,)
    main = spec.likelihood.name
    main_remedies, reference_remedy = spec.remedy_names()
    groups = {
        main: [
            Member(main, sigma, seed, beta, lr, remedy)
            for sigma, remedy, seed, beta, lr in itertools.product(
                sigmas, main_remedies, s.seeds, betas, rates
            )
        ]
    }
    for name in s.references:
        groups[name] = [
            Member(name, spec.likelihood.sigma, seed, beta, lr, reference_remedy)
            for seed, beta, lr in itertools.product(s.seeds, betas, rates)
        ]
    return groups


def member_remedy(spec: RunSpec, remedy: str) -> Remedy:
    """The `Remedy` of a member trained with `remedy` (`RunSpec.remedy_names`)."""
    return remedy_of(spec.train, only=remedy if spec.sweep.remedies else None)


def sigma_values(spec: RunSpec, train_x: np.ndarray | None = None) -> list[float]:
    """`sweep.sigma` (with `sweep.implicit_sigmas`, plus the σ that summed and mean MSE + KL
    imply for the data, `implicit_sigmas`), or with `sweep.sigma_from_spectrum` a grid
    straddling the spectrum of `train_x` (`vae_jax.linear.sigma_sq_grid_across_spectrum`).

    `train_x` is what the model trains on (`experiment.build_problem`: the training split less
    its validation examples); without it, the main group's problem is built to read it.
    """
    if not spec.sweep.sigma_from_spectrum:
        sigmas = list(spec.sweep.sigma)
        if spec.sweep.implicit_sigmas:
            implicit = implicit_sigmas(math.prod(data.event_shape(spec.data.name))).values()
            sigmas = sorted(set(sigmas) | {round(s, 6) for s in implicit})
        return sigmas
    if train_x is None:
        train_x = experiment.build_problem(spec.for_group(spec.likelihood.name)).train_x
    eigvals, _, _ = linear.data_spectrum(jnp.asarray(train_x.reshape(len(train_x), -1)))
    grid = linear.sigma_sq_grid_across_spectrum(eigvals, spec.model.latent_dim)
    return [float(v) for v in np.sqrt(np.asarray(grid))]


def start_sigma(problem: Problem, member: Member) -> float | None:
    """The σ training starts from: the config's fixed σ (GECO's λ₀ = D/(2σ²)), a learned
    scale's initial decoder std; None for other families."""
    if problem.likelihood.fixed_sigma:
        return member.sigma
    if problem.likelihood.learns_scale:
        return problem.model.sigma_init * problem.likelihood.std_factor
    return None
