"""The run spec's types: a run's config fields as frozen dataclasses, with the rules derived from
them (which transform a batch gets, whether a run trains by coordinate ascent, its remedies).

`vae_jax.spec.parse` builds a `RunSpec` from a config file's ConfigDict, checking every field;
`vae_jax.spec` re-exports these types, so code writes `spec.RunSpec`.
"""

from __future__ import annotations

import copy
import dataclasses

from vae_jax import data, likelihoods

LR_SCHEDULES = ("constant", "cosine")
BINARIZE = ("dynamic", "fixed", "none")
SIGMA_FITS = ("validation", "gradient")
# The objectives a sweep member can train with (`sweep.remedies`), each turned on by its
# config field: train.kl_warmup_steps, train.free_bits, train.geco_kappa.
REMEDIES = ("none", "kl_warmup", "free_bits", "geco")
REMEDY_FIELDS = {"kl_warmup": "kl_warmup_steps", "free_bits": "free_bits", "geco": "geco_kappa"}
# Gaussian decoders whose σ is one number (fixed or learned): a linear VAE's ELBO is closed-form.
EXACT_LINEAR_LIKELIHOODS = ("gaussian", "gaussian_learned")


@dataclasses.dataclass(frozen=True)
class Data:
    name: str  # an embedded or catalog dataset (`vae_jax.data`)
    dequantize: bool  # continuous likelihoods see x = (k + u) / 256
    binarize: str  # Bernoulli data: dynamic | fixed | none
    validation_fraction: float  # of the training split, held out for every selection
    train_subset: int | None = None  # the first N training examples only
    idx_dir: str | None = None  # mnist / fashion_mnist: the directory of their IDX files


@dataclasses.dataclass(frozen=True)
class Model:
    kind: str  # linear | mlp | conv
    latent_dim: int
    hidden_sizes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Likelihood:
    name: str  # a key of `vae_jax.likelihoods.LIKELIHOODS`
    sigma: float  # the fixed Gaussian's σ, pixel units
    sigma_floor: float
    sigma_init: float | None
    sigma_fit: str  # validation | gradient
    sigma_fit_every: int

    @property
    def family(self) -> likelihoods.Likelihood:
        return likelihoods.get_likelihood(self.name)

    @property
    def scale_on_validation(self) -> bool:
        """A shared learned scale fitted on the validation split between chunks: where the family
        has a closed-form fit (`refits`); a scale without one (gaussian_truncated's σ, whose
        normaliser moves with it) learns by gradient whatever `sigma_fit` says."""
        return (
            self.family.shared_learned_scale
            and self.family.refits
            and self.sigma_fit == "validation"
        )


@dataclasses.dataclass(frozen=True)
class Convergence:
    """A member has converged when over one chunk its objective moved by at most
    `objective_rtol` of itself and no latent's KL by more than `kl_atol` nats."""

    objective_rtol: float
    kl_atol: float


@dataclasses.dataclass(frozen=True)
class Train:
    num_steps: int
    batch_size: int
    learning_rate: float
    lr_schedule: str
    beta: float
    num_samples: int
    kl_warmup_start: float
    kl_warmup_steps: int
    free_bits: float
    geco_kappa: float
    geco_rate: float
    geco_decay: float
    log_every: int
    checkpoint_every: int
    full_batch: bool = False  # every step sees the whole training set
    convergence: Convergence | None = None  # a deterministic fit's members stop once converged

    @property
    def remedies(self) -> tuple[str, ...]:
        """The remedies these fields turn on, in `REMEDIES` order."""
        return tuple(n for n, f in REMEDY_FIELDS.items() if getattr(self, f) > 0)


@dataclasses.dataclass(frozen=True)
class Eval:
    iwae_samples: int
    batch_size: int
    sample_quality: bool = True
    sample_examples: int = 1000


@dataclasses.dataclass(frozen=True)
class Sweep:
    sigma: tuple[float, ...]
    seeds: tuple[int, ...]
    beta: tuple[float, ...] | None = None  # None: train.beta
    learning_rate: tuple[float, ...] | None = None  # None: train.learning_rate
    references: tuple[str, ...] = ()  # other likelihood families, one group each
    remedies: tuple[str, ...] | None = None  # each trained alone; None: as train.* sets
    sigma_from_spectrum: bool = False
    implicit_sigmas: bool = False
    members_per_slice: int | None = None
    multihost: bool = False
    smoke_test: bool = False


@dataclasses.dataclass(frozen=True)
class RunSpec:
    seed: int
    debug_nans: bool
    data: Data
    model: Model
    likelihood: Likelihood
    train: Train
    eval: Eval
    sweep: Sweep | None
    # The resolved config as config.json stores it (a workdir's guard compares it).
    config: dict = dataclasses.field(compare=False, repr=False)

    def for_group(self, name: str) -> RunSpec:
        """The single run a sweep group's members share: likelihood `name`, no sweep."""
        config = copy.deepcopy(self.config)
        config.pop("sweep", None)
        config["likelihood"]["name"] = name
        likelihood = dataclasses.replace(self.likelihood, name=name)
        return dataclasses.replace(self, likelihood=likelihood, sweep=None, config=config)

    @property
    def transform(self) -> str:
        """What each step does to a batch: 'binarize' (dynamic binarisation), 'dequantize'
        (uniform noise on an 8-bit image grid) or 'none'."""
        family = self.likelihood.family
        if family.binary_data:
            return "binarize" if self.data.binarize == "dynamic" else "none"
        dequantized = family.dequantized_data and self.data.dequantize
        return "dequantize" if dequantized and self.data.name in data.PIXEL_DATASETS else "none"

    @property
    def exact_linear(self) -> bool:
        return self.model.kind == "linear" and self.likelihood.name in EXACT_LINEAR_LIKELIHOODS

    @property
    def coordinate_ascent(self) -> bool:
        """Trains by `linear_fit`'s coordinate ascent on the exact ELBO: an exact linear model,
        whole-set steps, no transform of the batch."""
        return self.exact_linear and self.train.full_batch and self.transform == "none"

    def remedy_names(self) -> tuple[list[str], str]:
        """The main group's remedies and the references' one: `sweep.remedies`, each trained
        alone (references: 'none'); without it every member trains with all that train.* turns
        on, as a single run would."""
        listed = self.sweep.remedies if self.sweep is not None else None
        if not listed:
            name = "+".join(self.train.remedies) or "none"
            return [name], name
        return list(listed), "none"


def groups(spec: RunSpec) -> list[str]:
    """The likelihood families a run trains: the main one, then a sweep's references."""
    return [spec.likelihood.name, *(spec.sweep.references if spec.sweep else ())]


def group_remedies(spec: RunSpec, group: str) -> list[str]:
    main, reference = spec.remedy_names()
    return main if group == spec.likelihood.name else [reference]
