"""`python -m vae_jax.report WORKDIR`: a finished sweep's findings, recomputed from its files;
`python -m vae_jax.report --findings OUT.md SWEEP REMEDIES`: docs/findings.md from stored runs."""

import sys

from vae_jax.report import write

if len(sys.argv) == 5 and sys.argv[1] == "--findings":
    write.write_findings(*sys.argv[2:])
else:
    for line in write.findings_from_workdir(sys.argv[1]):
        print(line)
