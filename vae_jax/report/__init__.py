"""Reports: results rows in; report.md, docs/findings.md and their numbers out (`plots` draws).

  rows.py      row statistics: finished rows, means over seeds, by σ, the one formatter
  compare.py   the one comparison rule: the best fixed σ on validation, paired intervals
  sigma.py     the σ sweep's findings and tables
  remedies.py  "What to do instead": the remedies side by side
  linear.py    the linear-VAE section and linear_theory.json
  write.py     report.md after a sweep; findings recomputed from a workdir's files

`python -m vae_jax.report WORKDIR` prints a finished sweep's findings, recomputed from its
results.csv and per_example.npz; `python -m vae_jax.report --findings OUT.md SWEEP REMEDIES`
writes docs/findings.md from the stored runs.
"""

from vae_jax.report.write import findings_from_workdir, headline, sweep_report

__all__ = ["findings_from_workdir", "headline", "sweep_report"]
