"""Config validation: every field a user can mistype gets one line naming it and what works."""

from __future__ import annotations

import ast
import copy
import math
from collections.abc import Sequence
from typing import Any

import ml_collections

from vae_jax import data, likelihoods, models
from vae_jax.errors import ConfigError


def _number(config: ml_collections.ConfigDict, field: str) -> float:
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{field}={value!r} is not a number")
    if not math.isfinite(value):
        raise ConfigError(f"{field}={value!r} is not finite")
    return value


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
    value = config
    for part in field.split("."):
        value = value[part]
    return value


def positive(config: ml_collections.ConfigDict, field: str, *, integer: bool = False) -> None:
    value = _get(config, field)
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{field}={value!r} must be a positive integer")
    value = _number(config, field)
    if value <= 0:
        raise ConfigError(f"{field}={value!r} must be > 0")


def one_of(config: ml_collections.ConfigDict, field: str, allowed: Sequence[str]) -> None:
    value = _get(config, field)
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not known; allowed: {', '.join(allowed)}")


def positive_list(values: Any, field: str, *, integer: bool = False) -> list:
    """A non-empty list of finite positive numbers (integers ≥ 0 for seeds)."""
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


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError for the first field of `config` that cannot be used."""
    one_of(config, "data.name", data.EMBEDDED + data.CATALOG)
    one_of(config, "data.binarize", ("dynamic", "fixed", "none"))
    one_of(config, "model.kind", models.MODEL_KINDS)
    one_of(config, "train.lr_schedule", ("constant", "cosine"))
    one_of(config, "likelihood.name", tuple(likelihoods.LIKELIHOODS))
    positive(config, "model.latent_dim", integer=True)
    hidden = config.model.hidden_sizes
    if config.model.kind != "linear":
        positive_list(hidden, "model.hidden_sizes", integer=True)
        if any(h == 0 for h in hidden):
            raise ConfigError(f"model.hidden_sizes={list(hidden)!r}: every size must be >= 1")
    for field in ("likelihood.sigma", "likelihood.sigma_floor"):
        positive(config, field)
    if config.likelihood.sigma_init is not None:
        positive(config, "likelihood.sigma_init")
    one_of(config, "likelihood.sigma_fit", ("validation", "gradient"))
    positive(config, "likelihood.sigma_fit_every", integer=True)
    fraction = _number(config, "data.validation_fraction")
    if not 0 <= fraction < 0.5:
        raise ConfigError(f"data.validation_fraction={fraction!r} must be in [0, 0.5)")
    if config.likelihood.sigma_init is not None and (
        config.likelihood.sigma_init <= config.likelihood.sigma_floor
    ):
        raise ConfigError(
            f"likelihood.sigma_init={config.likelihood.sigma_init} must be > "
            f"likelihood.sigma_floor={config.likelihood.sigma_floor}"
        )
    for field in ("train.num_steps", "train.batch_size", "train.num_samples", "train.log_every"):
        positive(config, field, integer=True)
    positive(config, "train.checkpoint_every", integer=True)
    positive(config, "train.learning_rate")
    _number(config, "train.beta")
    if config.train.beta < 0:
        raise ConfigError(f"train.beta={config.train.beta!r} must be >= 0")
    for field in ("train.kl_warmup_start", "train.free_bits", "train.geco_kappa"):
        if _number(config, field) < 0:
            raise ConfigError(f"{field}={_get(config, field)!r} must be >= 0 (0 = off)")
    steps = config.train.kl_warmup_steps
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ConfigError(f"train.kl_warmup_steps={steps!r} must be an integer >= 0 (0 = off)")
    positive(config, "train.geco_rate")
    if not 0 <= _number(config, "train.geco_decay") < 1:
        raise ConfigError(f"train.geco_decay={config.train.geco_decay!r} must be in [0, 1)")
    positive(config, "eval.iwae_samples", integer=True)
    positive(config, "eval.batch_size", integer=True)
    if config.eval.get("sample_quality") is not None:
        if not isinstance(config.eval.sample_quality, bool):
            raise ConfigError(
                f"eval.sample_quality={config.eval.sample_quality!r} must be true or false"
            )
        positive(config, "eval.sample_examples", integer=True)
    if not isinstance(config.seed, int) or isinstance(config.seed, bool) or config.seed < 0:
        raise ConfigError(f"seed={config.seed!r} must be an integer >= 0")


_TYPE_NEEDS = {"int": "an integer", "float": "a number", "bool": "true or false"}


def override_error(
    config: ml_collections.ConfigDict, field: str, text: str, kind: str
) -> ConfigError:
    """The error for `--config.<field>=<text>` that ml_collections could not read as the field's
    type (`kind`, absl's name for it: 'int', 'float', 'bool'): the rule `check_config` states
    for the value as written (`model.latent_dim=1.5 must be a positive integer`), else the type
    the field needs."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    trial = copy.deepcopy(config)
    *parents, leaf = field.split(".")
    node = _get(trial, ".".join(parents)) if parents else trial
    with node.ignore_type():
        node[leaf] = value
    try:
        check_config(trial)
    except ConfigError as e:
        if str(e).startswith(f"{field}="):
            return e
    except (AttributeError, KeyError, TypeError):  # a config without the fields checked here
        pass
    return ConfigError(f"{field}={text} must be {_TYPE_NEEDS.get(kind, f'of type {kind}')}")
