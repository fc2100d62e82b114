"""The run spec: a config file's ConfigDict, parsed and checked once into frozen typed dataclasses.

    spec = vae_jax.spec.parse(config)      # ConfigError (one line) for the first unusable field
    spec.train.num_steps, spec.likelihood.family.learns_scale, spec.for_group("laplace")

Every check of a config field is here and nowhere else, so `ConfigError` is raised from this
module only. `parse` reads nothing from disk; `check_data` compares the spec with its dataset's
metadata (sizes, pixel levels; nothing is loaded) and runs before the data loads. The library
takes a `RunSpec` where it used to take the ConfigDict; the field names are the config's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import ml_collections

from vae_jax import data, likelihoods, models
from vae_jax.errors import ConfigError
from vae_jax.spec_types import (
    BINARIZE,
    EXACT_LINEAR_LIKELIHOODS,
    LR_SCHEDULES,
    REMEDIES,
    REMEDY_FIELDS,
    SIGMA_FITS,
    Convergence,
    Data,
    Eval,
    Likelihood,
    Model,
    RunSpec,
    Sweep,
    Train,
    group_remedies,
    groups,
)

__all__ = [
    "BINARIZE",
    "EXACT_LINEAR_LIKELIHOODS",
    "LR_SCHEDULES",
    "REMEDIES",
    "SIGMA_FITS",
    "Convergence",
    "Data",
    "Eval",
    "Likelihood",
    "Model",
    "RunSpec",
    "Sweep",
    "Train",
    "check_batch_split",
    "check_data",
    "group_remedies",
    "groups",
    "of",
    "parse",
]


def of(config: RunSpec | ml_collections.ConfigDict) -> RunSpec:
    """`config` as a RunSpec: parsed if it is a ConfigDict, else as it is."""
    return config if isinstance(config, RunSpec) else parse(config)


def parse(config: ml_collections.ConfigDict) -> RunSpec:
    """The RunSpec of `config`; ConfigError names the first field that cannot be used."""
    raw = config.to_dict() if hasattr(config, "to_dict") else copy.deepcopy(dict(config))
    fields = _Fields(raw)
    spec = RunSpec(
        seed=fields.integer("seed", minimum=0),
        debug_nans=fields.boolean("debug_nans", default=False),
        data=_data(fields),
        model=_model(fields),
        likelihood=_likelihood(fields),
        train=_train(fields),
        eval=_eval(fields),
        sweep=_sweep(fields) if "sweep" in raw else None,
        config=raw,
    )
    fields.refuse_unknown()
    for group in groups(spec):
        _check_group(spec.for_group(group), group_remedies(spec, group))
    return spec


def check_data(spec: RunSpec) -> None:
    """ConfigError where the spec does not fit its dataset's metadata (sizes, pixel levels,
    binary or grey pixels); nothing is loaded. A catalog dataset not prepared is a DataError."""
    name, family = spec.data.name, spec.likelihood.family
    num_train = data.num_examples(name, "train", idx_dir=spec.data.idx_dir)
    subset = spec.data.train_subset
    if subset is not None:
        if subset > num_train:
            raise ConfigError(
                f"data.train_subset={subset} is more than the {num_train} training examples "
                f"of data.name='{name}'"
            )
        num_train = subset
    num_validation = data.num_validation(num_train, spec.data.validation_fraction)
    num_train -= num_validation
    if spec.likelihood.scale_on_validation and not num_validation:
        raise ConfigError(
            f"likelihood.sigma_fit='validation' fits the scale of {family.name!r} on the "
            f"validation split, but data.validation_fraction={spec.data.validation_fraction} "
            f"holds none of the {num_train} training examples out; raise it, or set "
            "likelihood.sigma_fit='gradient'"
        )
    if family.binary_data and spec.data.binarize == "none" and name not in data.BINARY_DATASETS:
        raise ConfigError(
            f"likelihood.name='{family.name}' needs binary data but data.name='{name}' has grey "
            "values; set data.binarize to 'dynamic' or 'fixed'"
        )
    num_bins = data.NUM_BINS.get(name, 256)
    if family.discrete_data and num_bins != 256:
        raise ConfigError(
            f"likelihood.name='{family.name}' models 256 pixel levels but data.name='{name}' "
            f"has {num_bins}; use an 8-bit dataset (mnist_5k, mnist, ...)"
        )
    if not spec.train.full_batch and spec.train.batch_size > num_train:
        raise ConfigError(
            f"train.batch_size={spec.train.batch_size} is larger than the {num_train} training "
            f"examples of data.name='{name}'"
        )


def check_batch_split(batch_size: int, num_devices: int) -> None:
    """ConfigError unless each member's batch splits evenly over `num_devices`."""
    if batch_size % num_devices:
        raise ConfigError(
            f"train.batch_size={batch_size} must be divisible by the {num_devices} devices that "
            "split each member's batch"
        )


# ---------------------------------------------------------------------------------------------
# The sections.


def _data(f: _Fields) -> Data:
    fraction = f.number("data.validation_fraction")
    if not 0 <= fraction < 0.5:
        raise ConfigError(f"data.validation_fraction={fraction!r} must be in [0, 0.5)")
    subset = f.optional("data.train_subset")
    name = f.one_of("data.name", data.EMBEDDED + data.CATALOG)
    idx_dir = f.optional("data.idx_dir")
    if idx_dir is not None and (not isinstance(idx_dir, str) or not idx_dir):
        raise ConfigError(f"data.idx_dir={idx_dir!r} must be a directory's path")
    if idx_dir is not None and name not in data.IDX_DATASETS:
        raise ConfigError(
            f"data.idx_dir is read for data.name {' or '.join(data.IDX_DATASETS)} only, "
            f"not {name!r}; unset it"
        )
    return Data(
        name=name,
        dequantize=f.boolean("data.dequantize"),
        binarize=f.one_of("data.binarize", BINARIZE),
        validation_fraction=fraction,
        train_subset=None if subset is None else f.integer("data.train_subset", minimum=1),
        idx_dir=idx_dir,
    )


def _model(f: _Fields) -> Model:
    kind = f.one_of("model.kind", models.MODEL_KINDS)
    latent_dim = f.integer("model.latent_dim", minimum=1)
    hidden = f.take("model.hidden_sizes")
    if kind != "linear":
        _numbers(hidden, "model.hidden_sizes", integer=True)
        if any(h == 0 for h in hidden):
            raise ConfigError(f"model.hidden_sizes={list(hidden)!r}: every size must be >= 1")
    return Model(kind=kind, latent_dim=latent_dim, hidden_sizes=tuple(hidden or ()))


def _likelihood(f: _Fields) -> Likelihood:
    name = f.one_of("likelihood.name", tuple(likelihoods.LIKELIHOODS))
    sigma, floor = f.positive("likelihood.sigma"), f.positive("likelihood.sigma_floor")
    init = f.optional("likelihood.sigma_init")
    if init is not None:
        init = f.positive("likelihood.sigma_init")
        if init <= floor:
            raise ConfigError(
                f"likelihood.sigma_init={init} must be > likelihood.sigma_floor={floor}"
            )
    return Likelihood(
        name=name,
        sigma=sigma,
        sigma_floor=floor,
        sigma_init=init,
        sigma_fit=f.one_of("likelihood.sigma_fit", SIGMA_FITS),
        sigma_fit_every=f.integer("likelihood.sigma_fit_every", minimum=1),
    )


def _train(f: _Fields) -> Train:
    counts = ("num_steps", "batch_size", "num_samples", "log_every", "checkpoint_every")
    steps = {n: f.integer(f"train.{n}", minimum=1) for n in counts}
    learning_rate = f.positive("train.learning_rate")
    lr_schedule = f.one_of("train.lr_schedule", LR_SCHEDULES)
    beta = f.number("train.beta")
    if beta < 0:
        raise ConfigError(f"train.beta={beta!r} must be >= 0")
    offs = {}
    for name in ("kl_warmup_start", "free_bits", "geco_kappa"):
        offs[name] = f.number(f"train.{name}")
        if offs[name] < 0:
            raise ConfigError(f"train.{name}={offs[name]!r} must be >= 0 (0 = off)")
    warmup = f.take("train.kl_warmup_steps")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"train.kl_warmup_steps={warmup!r} must be an integer >= 0 (0 = off)")
    geco_rate = f.positive("train.geco_rate")
    geco_decay = f.number("train.geco_decay")
    if not 0 <= geco_decay < 1:
        raise ConfigError(f"train.geco_decay={geco_decay!r} must be in [0, 1)")
    convergence = None
    if f.optional("train.convergence") is not None:
        convergence = Convergence(
            objective_rtol=f.positive("train.convergence.objective_rtol"),
            kl_atol=f.positive("train.convergence.kl_atol"),
        )
    return Train(
        **steps,
        learning_rate=learning_rate,
        lr_schedule=lr_schedule,
        beta=beta,
        kl_warmup_steps=warmup,
        geco_rate=geco_rate,
        geco_decay=geco_decay,
        full_batch=f.boolean("train.full_batch", default=False),
        convergence=convergence,
        **offs,
    )


def _eval(f: _Fields) -> Eval:
    return Eval(
        iwae_samples=f.integer("eval.iwae_samples", minimum=1),
        batch_size=f.integer("eval.batch_size", minimum=1),
        sample_quality=f.boolean("eval.sample_quality", default=True),
        sample_examples=f.integer("eval.sample_examples", minimum=1, default=1000),
    )


def _sweep(f: _Fields) -> Sweep:
    def listed(field, *, integer=False):
        value = f.optional(field)
        return None if not value else tuple(_numbers(value, field, integer=integer))

    references = tuple(f.optional("sweep.references") or ())
    main = f.take("likelihood.name")
    for name in references:
        if name not in likelihoods.LIKELIHOODS:
            allowed = ", ".join(likelihoods.LIKELIHOODS)
            raise ConfigError(f"sweep.references holds {name!r}; allowed: {allowed}")
        if name == main or references.count(name) > 1:
            raise ConfigError(f"sweep.references lists {name!r} twice or as likelihood.name")
    slices = f.optional("sweep.members_per_slice")
    from_spectrum = f.boolean("sweep.sigma_from_spectrum", default=False)
    sigma = f.optional("sweep.sigma")
    return Sweep(
        sigma=() if from_spectrum and sigma is None else tuple(_numbers(sigma, "sweep.sigma")),
        seeds=tuple(_numbers(f.take("sweep.seeds"), "sweep.seeds", integer=True)),
        beta=listed("sweep.beta"),
        learning_rate=listed("sweep.learning_rate"),
        references=references,
        remedies=_sweep_remedies(f),
        sigma_from_spectrum=from_spectrum,
        implicit_sigmas=f.boolean("sweep.implicit_sigmas", default=False),
        members_per_slice=None if slices is None else f.integer("sweep.members_per_slice", 1),
        multihost=f.boolean("sweep.multihost", default=False),
        smoke_test=f.boolean("sweep.smoke_test", default=False),
    )


def _sweep_remedies(f: _Fields) -> tuple[str, ...] | None:
    listed = f.optional("sweep.remedies")
    if not listed:
        return None
    if isinstance(listed, str) or len(set(listed)) != len(listed):
        raise ConfigError(f"sweep.remedies={listed!r} must be a list of distinct names")
    for name in listed:
        if name not in REMEDIES:
            raise ConfigError(f"sweep.remedies holds {name!r}; allowed: {', '.join(REMEDIES)}")
        field = REMEDY_FIELDS.get(name)
        if field and f.take(f"train.{field}") <= 0:
            raise ConfigError(
                f"sweep.remedies holds {name!r} but train.{field}=0 turns it off; set it > 0"
            )
    return tuple(listed)


def _check_group(spec: RunSpec, remedies: list[str]) -> None:
    """The rules between fields that a family's group must meet (each group of a sweep)."""
    family = spec.likelihood.family
    geco = any("geco" in remedy.split("+") for remedy in remedies)
    if geco and not family.fixed_sigma:
        raise ConfigError(
            f"train.geco_kappa={spec.train.geco_kappa} (GECO) weights the MSE of a fixed-σ "
            f"Gaussian, not {family.name!r}: use likelihood.name='gaussian' (in a sweep, list "
            "'geco' in sweep.remedies so that reference families train without it)"
        )
    if spec.likelihood.scale_on_validation and spec.data.validation_fraction <= 0:
        raise ConfigError(
            f"likelihood.sigma_fit='validation' fits the scale of {family.name!r} on the "
            f"validation split, but data.validation_fraction={spec.data.validation_fraction} "
            "holds none out; set it > 0, or likelihood.sigma_fit='gradient'"
        )
    if spec.likelihood.scale_on_validation and spec.coordinate_ascent:
        raise ConfigError(
            "likelihood.sigma_fit='validation': this linear Gaussian VAE trains by coordinate "
            "ascent on the exact ELBO (train.full_batch=True), which fits σ on the training data "
            "in closed form; set likelihood.sigma_fit='gradient' (or train.full_batch=False)"
        )
    if spec.train.remedies and spec.coordinate_ascent:
        raise ConfigError(
            f"train: {', '.join(spec.train.remedies)} change the objective of gradient steps, "
            "but this linear Gaussian VAE trains by coordinate ascent on the exact ELBO "
            "(train.full_batch=True); set train.full_batch=False to train it with them"
        )


# ---------------------------------------------------------------------------------------------
# Reading one field.

_MISSING = object()


class _Fields:
    """The config's fields by dotted name; remembers which were read (`refuse_unknown`)."""

    def __init__(self, raw: dict):
        self.raw, self.read = raw, set()

    def take(self, field: str, default: Any = _MISSING) -> Any:
        node = self.raw
        for part in field.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is not _MISSING:
                    self.read.add(field)
                    return default
                raise ConfigError(f"{field} is missing from the config")
            node = node[part]
        self.read.add(field)
        return node

    def optional(self, field: str) -> Any:
        return self.take(field, None)

    def number(self, field: str) -> float:
        value = self.take(field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{field}={value!r} is not a number")
        if not math.isfinite(value):
            raise ConfigError(f"{field}={value!r} is not finite")
        return value

    def positive(self, field: str) -> float:
        value = self.number(field)
        if value <= 0:
            raise ConfigError(f"{field}={value!r} must be > 0")
        return value

    def integer(self, field: str, minimum: int, default: Any = _MISSING) -> int:
        value = self.take(field, default)
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{field}={value!r} must be {rule}")
        if value < minimum:
            raise ConfigError(f"{field}={value!r} must be " + ("> 0" if minimum == 1 else rule))
        return value

    def boolean(self, field: str, default: Any = _MISSING) -> bool:
        value = self.take(field, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{field}={value!r} must be true or false")
        return value

    def one_of(self, field: str, allowed: Sequence[str]) -> str:
        value = self.take(field)
        if value not in allowed:
            raise ConfigError(f"{field}={value!r} is not known; allowed: {', '.join(allowed)}")
        return value

    def refuse_unknown(self) -> None:
        """ConfigError for a field nothing reads (a misspelt name in a config file)."""
        for field in _leaves(self.raw):
            if field not in self.read and not any(field.startswith(r + ".") for r in self.read):
                raise ConfigError(f"{field} is not a config field vae_jax knows; remove it")


def _leaves(raw: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in raw.items():
        name = f"{prefix}{key}"
        out += _leaves(value, f"{name}.") if isinstance(value, dict) and value else [name]
    return out


def _numbers(values: Any, field: str, *, integer: bool = False) -> list:
    """A non-empty list of finite positive numbers (integers >= 0 for `integer`)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not len(values):
        raise ConfigError(f"{field}={values!r} must be a non-empty list of numbers")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"{field} holds {v!r}; every entry must be a finite number")
        if integer and (not isinstance(v, int) or v < 0):
            raise ConfigError(f"{field} holds {v!r}; every entry must be an integer >= 0")
        if not integer and v <= 0:
            raise ConfigError(f"{field} holds {v!r}; every entry must be > 0")
    return list(values)
