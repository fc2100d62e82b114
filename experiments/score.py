r"""Score a VAE trained anywhere on an embedded dataset: `vae_jax.score` as a command line.

    python experiments/score.py --model=path/to/my_vae.py --data=mnist_5k
    python experiments/score.py --model=my_package.my_vae --data=mnist_5k --likelihood=laplace \
        --convention=pytorch_vae

--model is a Python file, or an importable module name, that defines two batch functions on
NumPy (or JAX) arrays:

    def encode(x):   # x: float32 [N, *image_shape] in [0, 1] (dequantised: (k + u)/256)
        return mean, log_var        # each [N, latent_dim]
    def decode(z):   # z: float32 [N, latent_dim]
        return x_mean               # [N, *image_shape], the decoder's mean

--data names an embedded or prepared dataset (vae_jax.data, e.g. mnist_5k: [N, 28, 28, 1]); the
scale is fitted on the validation images that the project holds out of its training split
(data.validation_fraction of experiments/configs/default.py, `data.split_validation`), and the
test split is scored. --convention is the loss the model trained with: a known convention's name
(docs/conventions.md) or comma-separated `vae_jax.conventions.translate` arguments, e.g.
`recon=mean,kl_weight=0.00025,batch_size=64`.

It prints a table: each score with its unit and whether lower or higher is better (--json: the
same numbers as JSON, with results.csv's key names, as `vae_jax.score` returns them). With
--sample_quality (the default, for a labelled image dataset) it first trains that dataset's
feature network once and caches it beside the data (about a minute on a 2-core CPU for mnist_5k;
--sample_quality=false skips it and the Fréchet distances). Bad input prints one line
`error: ...` and exits with status 2; Ctrl-C prints one line and exits with status 130.
"""

import importlib
import importlib.util
import json
import os
import pathlib
import sys

from absl import flags

# Run as a script from anywhere: the package lives one directory up.
REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments import cli  # noqa: E402
from experiments.configs import default  # noqa: E402
from vae_jax import score_inputs  # noqa: E402
from vae_jax.errors import InputError  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "A .py file or module defining encode and decode.")
_DATA = flags.DEFINE_string("data", "mnist_5k", "Dataset whose validation and test split to use.")
_LIKELIHOOD = flags.DEFINE_enum("likelihood", "gaussian", list(score_inputs.FAMILIES), "Decoder.")
_SCALE = flags.DEFINE_enum("scale", "shared", list(score_inputs.SCALES), "One scale or per pixel.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 100, "K of the importance-weighted bound.")
_DEQUANTIZE = flags.DEFINE_boolean("dequantize", True, "Score x = (k + u)/256, as the project.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the dequantisation and z draws.")
_SAMPLE_QUALITY = flags.DEFINE_boolean(
    "sample_quality",
    True,
    "Also the samples' Fréchet distance, precision / recall (labelled data).",
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 100, "Images per batch (and per model call).")
_CONVENTION = flags.DEFINE_string(
    "convention", None, "The training loss: a known name, or key=value,... (translate's args)."
)
_JSON = flags.DEFINE_boolean("json", False, "Print the results as JSON instead of a table.")


def load_model(spec: str):
    """(encode, decode) from a .py file or an importable module (InputError otherwise)."""
    try:
        if spec.endswith(".py"):
            path = pathlib.Path(spec)
            if not path.is_file():
                raise InputError(
                    f"--model={spec}: no such file (paths are relative to {os.getcwd()})"
                )
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 — the user's module failed to load: say how, in one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"--model={spec} could not be loaded: {type(e).__name__}: {first}") from e
    missing = [name for name in ("encode", "decode") if not callable(getattr(module, name, None))]
    if missing:
        raise InputError(f"--model={spec} defines no function {' or '.join(missing)}")
    return module.encode, module.decode


def parse_convention(text: str | None) -> str | dict | None:
    """A known convention's name, or `key=value,...` as translate's keyword arguments."""
    if text is None or "=" not in text:
        return text
    kwargs = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        for kind in (int, float):
            try:
                kwargs[key.strip()] = kind(value)
                break
            except ValueError:
                continue
        else:
            kwargs[key.strip()] = value.strip()
    return kwargs


# What the keys that only `vae_jax.score` returns measure (`experiment.result_lines` labels the
# rest): (a part of the key, its meaning with unit and direction).
_LEGEND = (
    (
        "bits_per_dim",
        "−log p(x) can be below 0: p is a density on [0, 1]^D, which exceeds 1 where the model "
        "concentrates its mass; bits/dim is on the 8-bit scale, (−log p(x) + D·log 256) / "
        "(D·log 2), and stays positive",
    ),
    (
        "fd_",
        "fd_*: Fréchet distance between feature-network features of the decoder's images "
        "and of the test images (lower is better)",
    ),
    (
        "precision_",
        "precision_* / recall_*: fraction in [0, 1] of generated images on the "
        "test images' feature manifold / of test images on the generated ones' (higher is better)",
    ),
    (
        "recon_accuracy",
        "recon_accuracy: fraction of reconstructions the feature network "
        "labels as their image's class (higher is better)",
    ),
    (
        "_implied",
        "*_implied: scored with the σ the --convention implies; implied_cost = "
        "iwae_nll_implied − iwae_nll, nats per example (lower is better)",
    ),
)


def legend(results: dict) -> list[str]:
    """One line for each kind of key in `results` that needs a word beyond its unit."""
    return [f"  ({text})" for part, text in _LEGEND if any(part in key for key in results)]


def main(argv: list[str]) -> None:
    if _MODEL.value is None:
        cli.fail("--model is required: a .py file or module defining encode(x) and decode(z)")
    encode, decode = load_model(_MODEL.value)
    from vae_jax import data, experiment, features, scoring  # jax and tfds: the input is good

    try:
        train_x = data.load_numpy(_DATA.value, "train")
        test_x = data.load_numpy(_DATA.value, "test")
    except data.DataError as e:
        raise InputError(f"--data={_DATA.value}: {e}") from None
    fraction = default.get_config().data.validation_fraction
    _, val_x = data.split_validation(train_x, fraction)
    quality = {}
    if _SAMPLE_QUALITY.value and _DATA.value in features.IMAGE_DATASETS:
        quality = dict(
            feature_net=features.feature_network(_DATA.value, validation_fraction=fraction),
            labels=data.load_labels(_DATA.value, "test"),
        )
    results = scoring.score(
        encode,
        decode,
        val_x,
        test_x,
        likelihood=_LIKELIHOOD.value,
        scale=_SCALE.value,
        num_samples=_NUM_SAMPLES.value,
        dequantize=_DEQUANTIZE.value,
        seed=_SEED.value,
        num_bins=data.NUM_BINS.get(_DATA.value, 256),
        batch_size=_BATCH_SIZE.value,
        convention=parse_convention(_CONVENTION.value),
        **quality,
    )
    if _JSON.value:
        print(json.dumps(results, indent=2))
    else:
        print(f"{_MODEL.value} scored on the test split of {_DATA.value}:")
        print("\n".join(experiment.result_lines(results) + legend(results)))


if __name__ == "__main__":
    cli.run(main, usage=__doc__)
