"""vae_jax.spec, the one validated run spec, and the messages a bad config value gets: every
field `spec.parse` guards, the sweep lists, and through the command line an override it cannot
use (a typo, a scalar for a tuple, a value a check refuses). The promise (docs/design.md
"Errors"): one line that names the field and what works, exit status 2, and every file of an
earlier run in the workdir as it was."""

import dataclasses
import math
import pathlib

import ml_collections
import pytest
from conftest import (
    LIKELIHOOD_NAMES,
    REPO,
    SIGMA_SWEEP_CONFIG,
    SWEEP_FIELDS,
    TINY,
    assert_config_error,
    assert_one_line_error,
    config_flags,
    load_config,
    run_cli,
    snapshot,
    tiny_config,
)

from vae_jax import data, experiment, spec, sweep
from vae_jax.errors import ConfigError, UsageError

# ---------------------------------------------------------------------------------------------
# Overrides on the command line: one line naming the field, the earlier run untouched.


def test_config_field_typo_suggests_the_close_match(tmp_path):
    line = assert_one_line_error(run_cli("--config.likelihood.sigmaa=0.1", f"--workdir={tmp_path}"))
    assert (
        "--config.likelihood.sigmaa: no such config field 'sigmaa' (did you mean 'sigma'?)" in line
    )
    assert "\\" not in line


def test_config_field_without_a_close_match_names_it_once(tmp_path):
    line = assert_one_line_error(run_cli("--config.train.zzz=1", f"--workdir={tmp_path}"))
    assert "--config.train.zzz: no such config field 'zzz'" in line
    assert "did you mean" not in line


def test_scalar_for_a_tuple_field_is_refused_with_the_spelling_that_works(tmp_path):
    line = assert_one_line_error(
        run_cli(
            "--config.sweep.sigma=0.1",
            f"--workdir={tmp_path}/w",
            config=f"{SIGMA_SWEEP_CONFIG}:quick",
        )
    )
    assert "sweep.sigma" in line and "--config.sweep.sigma='(0.1,)'" in line
    assert not (tmp_path / "w").exists()
    # A string element needs its quotes inside the tuple; the message must spell them.
    line = assert_one_line_error(
        run_cli(
            "--config.sweep.references=laplace",
            f"--workdir={tmp_path}/w",
            config=f"{SIGMA_SWEEP_CONFIG}:quick",
        )
    )
    assert "--config.sweep.references=\"('laplace',)\"" in line


CLI_CASES = {  # what the flag parser refuses, and one error raised after it (likelihood.name)
    "unknown override": (["--config.train.no_such_field=1"], ["no_such_field"]),
    "sigma string": (["--config.likelihood.sigma=abc"], ["likelihood.sigma", "abc"]),
    "unknown likelihood.name": (
        ["--config.likelihood.name=gauss"],
        ["likelihood.name", "gauss", *LIKELIHOOD_NAMES],
    ),
}


@pytest.mark.parametrize(
    "case",  # the first case through the CLI by default, the others with -m slow
    [c if i == 0 else pytest.param(c, marks=pytest.mark.slow) for i, c in enumerate(CLI_CASES)],
)
def test_bad_config_through_the_cli_is_one_line_and_leaves_the_earlier_run(case, earlier_run):
    overrides, names = CLI_CASES[case]
    before = snapshot(earlier_run)
    proc = run_cli(f"--workdir={earlier_run}", *config_flags(TINY), *overrides)
    assert_one_line_error(proc, *names)
    assert snapshot(earlier_run) == before


# ---------------------------------------------------------------------------------------------
# In-process: the ConfigError run.py prints as one line and exits 2 on.

CONFIG_CASES = {
    "unknown data.name": ({"data.name": "imagenet"}, ["data.name", "imagenet", "digits"]),
    "unknown model.kind": ({"model.kind": "resnet"}, ["model.kind", "resnet", "mlp"]),
    "sigma zero": ({"likelihood.sigma": 0.0}, ["likelihood.sigma", "> 0"]),
    "sigma negative": ({"likelihood.sigma": -0.5}, ["likelihood.sigma", "> 0"]),
    "sigma nan": ({"likelihood.sigma": math.nan}, ["likelihood.sigma", "nan"]),
    "latent_dim zero": ({"model.latent_dim": 0}, ["model.latent_dim", "> 0"]),
    "latent_dim negative": ({"model.latent_dim": -3}, ["model.latent_dim"]),
    "batch larger than data": (
        {"train.batch_size": 100000},
        ["train.batch_size", "100000", "1293"],  # digits' 1437 less the validation tenth
    ),
    "bernoulli on grey data": (
        {"likelihood.name": "bernoulli", "data.binarize": "none"},
        ["bernoulli", "data.binarize"],
    ),
    "different config in workdir": ({"seed": 7}, ["different config", "seed"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_is_one_line_and_leaves_the_earlier_run(case, earlier_run):
    fields, names = CONFIG_CASES[case]
    before = snapshot(earlier_run)
    with pytest.raises(UsageError, match=names[0]) as error:  # a field, or another config's workdir
        experiment.train_and_evaluate(tiny_config(fields), earlier_run)
    assert_config_error(error, *names)
    assert snapshot(earlier_run) == before


VALIDATION_CASES = [
    ({"data.name": "imagenet"}, "data.name"),
    ({"data.binarize": "sometimes"}, "data.binarize"),
    ({"model.kind": "resnet"}, "model.kind"),
    ({"likelihood.name": "poisson"}, "likelihood.name"),
    ({"model.latent_dim": 0}, "model.latent_dim"),
    ({"model.latent_dim": -1}, "model.latent_dim"),
    ({"model.latent_dim": 2.5}, "model.latent_dim"),
    ({"model.hidden_sizes": (16, 0)}, "model.hidden_sizes"),
    ({"model.hidden_sizes": ()}, "model.hidden_sizes"),
    ({"likelihood.sigma": 0.0}, "likelihood.sigma"),
    ({"likelihood.sigma": -1.0}, "likelihood.sigma"),
    ({"likelihood.sigma": math.nan}, "likelihood.sigma"),
    ({"likelihood.sigma": math.inf}, "likelihood.sigma"),
    ({"likelihood.sigma_floor": 0.0}, "likelihood.sigma_floor"),
    ({"likelihood.sigma_init": 1e-4}, "likelihood.sigma_init"),
    ({"train.num_steps": 0}, "train.num_steps"),
    ({"train.batch_size": 0}, "train.batch_size"),
    ({"train.learning_rate": 0.0}, "train.learning_rate"),
    ({"train.learning_rate": math.nan}, "train.learning_rate"),
    ({"train.beta": -1.0}, "train.beta"),
    ({"train.log_every": 0}, "train.log_every"),
    ({"train.checkpoint_every": 0}, "train.checkpoint_every"),
    ({"eval.iwae_samples": 0}, "eval.iwae_samples"),
    ({"seed": -1}, "seed"),
]


@pytest.mark.parametrize("fields, name", VALIDATION_CASES, ids=lambda x: str(x))
def test_check_config_names_the_field(fields, name):
    with pytest.raises(ConfigError, match=name) as raised:
        spec.parse(tiny_config(fields))
    message = str(raised.value)
    assert name in message
    assert "\n" not in message


def test_check_config_accepts_the_tiny_config():
    # The config each case above changes one field of: accepted (no ConfigError), so each refusal
    # is that field's, and used as given, not quietly changed into a config that passes.
    config = tiny_config()
    spec.parse(config)
    assert config.to_dict() == tiny_config().to_dict()


# ---------------------------------------------------------------------------------------------
# Sweep lists.


# `sweep.sigma` must be non-empty and numeric. A config file sets a bad list (lists cannot be given
# on the command line); the overrides need `sweep.sigma` to be a tuple in the config.
# In-process, test_sweep_lists_name_the_field checks every bad list; the slow cases show the line.
def sweep_config_file(tmp_path: pathlib.Path, sigma_expr: str) -> pathlib.Path:
    path = tmp_path / "bad_sweep.py"
    path.write_text(
        "from experiments.configs import sigma_sweep\n\n\n"
        "def get_config(arg=None):\n"
        "    config = sigma_sweep.get_config('quick')\n"
        f"    config.sweep.sigma = {sigma_expr}\n"
        "    return config\n"
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "sigma_expr, names",
    [("[]", ["sweep.sigma", "non-empty"]), ("[0.1, 'a']", ["sweep.sigma", "'a'"])],
)
def test_bad_sweep_sigma_in_config_file(sigma_expr, names, tmp_path):
    config = sweep_config_file(tmp_path, sigma_expr)
    proc = run_cli(f"--workdir={tmp_path / 'w'}", *config_flags(SWEEP_FIELDS), config=config)
    assert_one_line_error(proc, *names)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "override, names",
    [
        pytest.param(
            "--config.sweep.sigma=()", ["sweep.sigma", "non-empty"], marks=pytest.mark.slow
        ),
        ("--config.sweep.sigma=abc", ["sweep.sigma", "'abc'"]),
        pytest.param(
            "--config.sweep.sigma=(0.1,-2.0)", ["sweep.sigma", "-2"], marks=pytest.mark.slow
        ),
    ],
)
def test_bad_sweep_sigma_override(override, names, tmp_path):
    proc = run_cli(
        f"--workdir={tmp_path / 'w'}",
        *config_flags(SWEEP_FIELDS),
        override,
        config=f"{SIGMA_SWEEP_CONFIG}:quick",
    )
    assert_one_line_error(proc, *names)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "field, values",
    [
        ("sigma", []),
        ("sigma", ()),
        ("sigma", "0.1"),
        ("sigma", [0.1, "a"]),
        ("sigma", [0.1, math.nan]),
        ("sigma", [0.1, 0.0]),
        ("sigma", [True]),
        ("seeds", [-1]),
        ("seeds", [0.5]),
        ("seeds", []),
    ],
)
def test_sweep_lists_name_the_field(field, values):
    config = tiny_config()
    config.sweep = ml_collections.ConfigDict({"sigma": [0.1, 1.0], "seeds": [0]} | {field: values})
    with pytest.raises(ConfigError, match=f"sweep.{field}"):
        sweep.members_by_group(spec.parse(config))


# ------------------------------------------------------------------------------- the run spec


def test_parse_gives_frozen_typed_sections_with_the_configs_names():
    parsed = spec.parse(tiny_config())
    assert isinstance(parsed.train, spec.Train) and isinstance(parsed.model.hidden_sizes, tuple)
    assert parsed.train.num_steps == tiny_config().train.num_steps
    assert parsed.config == tiny_config().to_dict()  # what config.json stores
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'num_steps'"):
        parsed.train.num_steps = 1  # type: ignore[misc]
    group = spec.parse(load_config(SIGMA_SWEEP_CONFIG, "quick")).for_group("laplace")
    assert group.likelihood.name == "laplace" and group.sweep is None
    assert group.config["likelihood"]["name"] == "laplace" and "sweep" not in group.config


def test_a_field_nothing_reads_is_refused():
    config = tiny_config()
    with config.unlocked():
        config.train.num_step = 10  # a misspelt name in a config file
    with pytest.raises(ConfigError, match="train.num_step is not a config field"):
        spec.parse(config)


def test_the_data_is_checked_against_its_metadata_before_it_loads(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before the spec was checked against it")

    monkeypatch.setattr(data, "load_numpy", no_loading)
    with pytest.raises(ConfigError, match="train.batch_size=100000 is larger than the"):
        experiment.build_problem(tiny_config(train__batch_size=100000))
    with pytest.raises(ConfigError, match="models 256 pixel levels but data.name='digits'"):
        experiment.build_problem(tiny_config(likelihood__name="discretized_logistic"))


def test_config_error_is_raised_in_vae_jax_spec_only():
    """Every check of a config field lives in one module (the other inputs have their own
    UsageError kinds, raised where those inputs are read)."""
    raising = sorted(
        str(path.relative_to(REPO))
        for path in [*REPO.glob("vae_jax/**/*.py"), *REPO.glob("experiments/**/*.py")]
        if "raise ConfigError" in path.read_text() or "return ConfigError" in path.read_text()
    )
    assert raising == ["vae_jax/spec.py"]


def test_a_spectrum_sweep_builds_its_main_problem_once(monkeypatch):
    """sweep.train_and_evaluate builds each group's problem, then reads the σ grid off the main
    one's training data: given that data, the members are found without building it again."""
    config = load_config(REPO / "experiments" / "configs" / "linear_vae.py")
    config.data.name = "digits"
    parsed = spec.parse(config)
    train_x = experiment.build_problem(parsed.for_group(parsed.likelihood.name)).train_x
    built = []
    original = experiment.build_problem
    monkeypatch.setattr(experiment, "build_problem", lambda c: built.append(c) or original(c))
    groups = sweep.members_by_group(parsed, train_x)
    assert not built and len(groups[parsed.likelihood.name]) > 1
    assert sweep.members_by_group(parsed) == groups and len(built) == 1  # without it: built once


@pytest.mark.parametrize(
    "name, on_validation",
    [("gaussian_learned", True), ("laplace", True), ("gaussian_truncated", False)],
)
def test_a_shared_scale_is_fitted_on_validation_only_where_it_has_a_closed_form(
    name, on_validation
):
    """gaussian_truncated's normaliser moves with σ, so it has no closed-form fit: its σ learns
    by gradient even under the default sigma_fit='validation' (it crashed calling a missing fit)."""
    parsed = spec.parse(tiny_config(likelihood__name=name))
    assert parsed.likelihood.sigma_fit == "validation"
    assert parsed.likelihood.scale_on_validation is on_validation


def test_a_scale_the_decoder_predicts_has_no_refit():
    """log_prob reads gaussian_decoder's scale from the decoder output, never from log_sigma, so
    a refitted log σ would leave its scores as they were."""
    family = spec.parse(tiny_config(likelihood__name="gaussian_decoder")).likelihood.family
    assert family.scale_from_decoder and family.log_scale_mle is not None
    assert not family.refits
