"""Preparing TFDS catalog datasets: download once, store as ArrayRecord where `vae_jax.data` reads.

The one place TensorFlow is used, and only with the `[catalog]` extra: TFDS's catalog builders
(mnist, fashion_mnist, cifar10, binarized_mnist) read their downloads with `tf.io.gfile` and
encode every image to PNG with `tf.image`, and tfds 4.9.10 finds their checksum files through
`importlib_resources`. Reading the prepared data (`vae_jax.data.load_numpy`) decodes the PNGs
with PIL and never imports TensorFlow. (`tfds build` would also need apache-beam, which
tfds 4.9.10's command line imports at start-up.)
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds
from etils import epath

from vae_jax import data


def prepare(name: str, data_dir: str | os.PathLike | None = None) -> epath.Path:
    """Download catalog dataset `name` and store it as ArrayRecord in `data_dir` (default
    `data.default_data_dir()`); returns the prepared version's directory. Needs network the
    first time; a dataset already prepared there is left as it is."""
    if name not in data.CATALOG:
        raise data.DataError(
            f"data.name={name!r} is not a catalog dataset; allowed: {', '.join(data.CATALOG)}"
        )
    try:
        # TensorFlow first: without the extra, it is the one to name.
        import tensorflow  # noqa: F401, I001
        import importlib_resources  # noqa: F401
    except ImportError as e:
        raise data.DataError(
            f"preparing data.name={name!r} needs {e.name}, which the catalog extra installs: "
            'pip install -e ".[catalog]"'
        ) from None
    data_dir = os.fspath(data_dir) if data_dir is not None else data.default_data_dir()
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    random_access = set(tfds.core.FileFormat.with_random_access())
    if builder.is_prepared() and not builder.info.available_file_formats() & random_access:
        raise data.DataError(  # and tfds will not overwrite a prepared version
            f"--data_dir={data_dir} holds data.name={name!r} as "
            f"{builder.info.file_format.value}, which training cannot read; use a new --data_dir"
        )
    builder.download_and_prepare(file_format="array_record")
    return builder.data_path
