"""Download a TFDS catalog dataset once and store it as ArrayRecord, where training reads it.

    pip install -e ".[catalog]"
    python experiments/prepare_data.py --name=mnist [--data_dir=DIR]

Needs network and the `[catalog]` extra (TensorFlow encodes the images); training on the prepared
data needs neither. DIR defaults to `$VAE_JAX_DATA_DIR`, else `$TFDS_DATA_DIR`, else
`~/tensorflow_datasets` — where `experiments/run.py --config.data.name=mnist` looks. Bad flags or
a missing extra print one line and exit with status 2; Ctrl-C prints one line and exits with 130.
"""

import logging
import pathlib
import sys

from absl import flags

# Run as a script from anywhere: the package lives one directory up.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from experiments import cli  # noqa: E402
from vae_jax import catalog, data  # noqa: E402

_NAME = flags.DEFINE_enum("name", None, list(data.CATALOG), "Catalog dataset to prepare.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where to store it; default: see above.")


def main(argv: list[str]) -> None:
    if _NAME.value is None:
        cli.fail(f"--name is required; allowed: {', '.join(data.CATALOG)}")
    logging.getLogger("absl").setLevel(logging.WARNING)  # tfds's download warnings show
    path = catalog.prepare(_NAME.value, _DATA_DIR.value)
    print(f"{_NAME.value} prepared in {path}")


if __name__ == "__main__":
    cli.run(main, usage=__doc__)
