"""`python -m vae_jax.report WORKDIR`: a finished sweep's report.md and plots/ rendered from its
files, and its findings printed; `python -m vae_jax.report --print WORKDIR`: the findings only,
writing nothing (for stored runs under docs/results); `python -m vae_jax.report --findings
OUT.md RESULTS`: docs/findings.md from the stored runs under RESULTS (docs/results);
`python -m vae_jax.report --readme README.md RESULTS`: README's answer and replication blocks
from the stored runs under RESULTS."""

import pathlib
import sys

from vae_jax.report import findings, readme, write

if len(sys.argv) == 4 and sys.argv[1] == "--findings":
    findings.write_findings(*sys.argv[2:])
elif len(sys.argv) == 4 and sys.argv[1] == "--readme":
    target = pathlib.Path(sys.argv[2])
    target.write_text(readme.rewrite(target.read_text(), sys.argv[3]))
else:
    path = sys.argv[-1]
    if sys.argv[1:] != ["--print", path]:
        write.render(path)
    for line in write.findings_from_workdir(path):
        print(line)
