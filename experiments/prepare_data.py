"""Download a TFDS catalog dataset once and store it as ArrayRecord, where training reads it.

    pip install -e ".[catalog]"
    python experiments/prepare_data.py --name=mnist [--data_dir=DIR]

Needs network and the `[catalog]` extra (TensorFlow encodes the images); training on the prepared
data needs neither. DIR defaults to `$VAE_JAX_DATA_DIR`, else `$TFDS_DATA_DIR`, else
`~/tensorflow_datasets` — where `experiments/run.py --config.data.name=mnist` looks. Bad flags or
a missing extra print one line and exit with status 2.
"""

import logging
import pathlib
import sys

from absl import app, flags

# Run as a script from anywhere: the package lives one directory up.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from vae_jax import catalog, data  # noqa: E402
from vae_jax.errors import UsageError  # noqa: E402

_NAME = flags.DEFINE_enum("name", None, list(data.CATALOG), "Catalog dataset to prepare.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where to store it; default: see above.")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e).strip().splitlines()[0])
    if _NAME.value is None:
        _fail(f"--name is required; allowed: {', '.join(data.CATALOG)}")
    return rest


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        path = catalog.prepare(_NAME.value, _DATA_DIR.value)
    except UsageError as e:
        _fail(str(e))
    print(f"{_NAME.value} prepared in {path}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
