"""Reports: a workdir's files in; report.md, figures, docs/findings.md and README's answer out.

  rows.py          row statistics: finished rows, means over seeds, by σ, the one formatter
  compare.py       the one comparison rule: the best fixed σ on validation, paired intervals
  sigma.py         the σ sweep's findings and tables
  remedies.py      "What to do instead": the remedies side by side
  samples.py       "What it looks like": sample quality beside the likelihood
  linear.py        the linear-VAE section, from linear_theory.json; the theory's collapse count
  plots.py         the figures (sample_plots.py: NLL and FD against σ, the sample grid)
  write.py         report.md and plots/ rendered from a workdir's files; a run's findings
  findings.py      docs/findings.md: the replication table and every stored run's findings
  replication.py   README's replication table: one row per (dataset, model)
  verdict.py       the verdict a finished sweep prints
  readme.py        README's answer

`python -m vae_jax.report WORKDIR` renders a finished sweep's report.md and plots/ from its
files and prints its findings; `python -m vae_jax.report --findings OUT.md RESULTS` writes
docs/findings.md from the stored runs under RESULTS. Nothing here runs a model: what a figure
needs from one, the driver stored (`vae_jax.figure_data`).
"""

from vae_jax.report.plots import single_run_plots
from vae_jax.report.write import findings_from_workdir, headline, render

__all__ = ["findings_from_workdir", "headline", "render", "single_run_plots"]
