"""`python -m vae_jax.report WORKDIR`: a finished sweep's report.md and plots/ rendered from its
files, and its findings printed; `python -m vae_jax.report --findings OUT.md SWEEP REMEDIES`:
docs/findings.md from stored runs."""

import sys

from vae_jax.report import write

if len(sys.argv) == 5 and sys.argv[1] == "--findings":
    write.write_findings(*sys.argv[2:])
else:
    write.render(sys.argv[1])
    for line in write.findings_from_workdir(sys.argv[1]):
        print(line)
