"""The verdict a finished σ sweep prints and its report.md opens with: "is MSE + KL sound?" in a
few plain lines, every number read from the run's own files.

`verdict_lines(config, rows, num_dims, per_example, stored)` gives:
- the best fixed σ on validation data and its test NLL;
- what summed MSE + KL (σ² = ½) and mean-over-pixels MSE + summed KL (σ² = D/2) cost against it,
  as trained and refit, nats per image with the seed-level 95% interval of
  `vae_jax.report.compare` ("not resolved" where it holds 0);
- how many latents collapse at σ² = ½ (and at the best σ);
- which σ's decoder means f(z), z ~ N(0, I), are closest to the data by the Fréchet distance
  (chosen on validation images), beside the likelihood's σ.
Each line is marked as this run's measurement (its data, model, seeds and steps), and the last
names where the stored full-size runs and their findings are (`stored`). Lines whose inputs a
run lacks (no σ² = ½ member, no sample metrics, one seed) are left out, never filled in.
"""

from __future__ import annotations

from vae_jax.likelihoods import implicit_sigmas
from vae_jax.report import compare, samples
from vae_jax.report.rows import mean, ok_rows

STORED = (
    "docs/results (mnist_5k and full-size Fashion-MNIST, MLP and conv VAE; README's replication "
    "table) and docs/findings.md"
)


def _run_label(config: dict, rows: list[dict]) -> str:
    model = config["model"]
    hidden = "-".join(str(h) for h in model.get("hidden_sizes") or ())
    seeds = len({r["seed"] for r in rows})
    return (
        f"{config['data']['name']}, {model['kind']} VAE {hidden + ' ' if hidden else ''}"
        f"with {model['latent_dim']} latents, {config['train']['num_steps']} steps, "
        f"{seeds} seed{'s' if seeds != 1 else ''}"
    )


def _members_at(rows: list[dict], main: str, sigma: float) -> list[dict]:
    """The main group's fixed-σ members within 1% of `sigma`; [] if the sweep lacks it."""
    for s, members in compare.fixed_sigma_groups(rows, main).items():
        if abs(s - sigma) / sigma < 0.01:
            return members
    return []


def _cost_line(name: str, sigma: float, members, rows, main, per_example) -> str:
    trained = compare.against_best(members, rows, main, per_example)
    refit = compare.against_best(members, rows, main, per_example, "_refit")
    return (
        f"- {name} (σ = {sigma:.3g}) costs {compare.said(trained)} per image as trained "
        f"({compare.verdict(trained)}) and {compare.said(refit)} refit "
        f"({compare.verdict(refit)}), against the best fixed σ of the same score."
    )


def _collapse_line(summed_rows, best_rows, latent_dim: int) -> str:
    def collapsed(members):
        return mean(members, "test/collapsed_fraction") * latent_dim

    return (
        f"- Collapse at σ² = ½: {collapsed(summed_rows):.1f} of {latent_dim} latents collapsed "
        f"({mean(summed_rows, 'test/active_units'):.1f} active), against "
        f"{collapsed(best_rows):.1f} collapsed at the best fixed σ (mean over seeds)."
    )


def _fd_line(rows: list[dict], main: str) -> list[str]:
    by_nll = samples.best_by(rows, main, "val/iwae_nll")
    by_fd = samples.best_by(rows, main, "val/fd_prior_mean")
    if by_nll is None or by_fd is None or mean(by_fd[1], "test/fd_prior_mean") is None:
        return []
    key = "test/fd_prior_mean"
    if by_fd[0] == by_nll[0]:
        said = f"the likelihood's best σ too (test FD {samples.spread(by_fd[1], key)})"
    else:
        diff = compare.fd_difference(by_fd[1], by_nll[1], key)
        said = (
            f"test FD {samples.spread(by_fd[1], key)}, against "
            f"{samples.spread(by_nll[1], key)} at the likelihood's σ = {by_nll[0]:.3g} "
            f"(difference {compare.fd_said(diff)})"
        )
    return [
        f"- Samples people look at: the decoder means f(z), z ~ N(0, I), closest to the "
        f"validation images by Fréchet distance are σ = {by_fd[0]:.3g}'s: {said}; lower is "
        f"better, seeds' range in brackets."
    ]


def verdict_lines(
    config: dict,
    rows: list[dict],
    num_dims: int,
    per_example: dict | None,
    stored: str = STORED,
) -> list[str]:
    """The verdict of a σ sweep from its config.json, results.csv rows (`rows.with_index`, no
    remedies) and per_example.npz; [] for a sweep of remedies (its report has its own findings)
    and when the main group has no fixed σ chosen on validation."""
    main = config["likelihood"]["name"]
    best = compare.best_fixed_sigma(rows, main)
    if config["sweep"].get("remedies") or best is None or not ok_rows(rows):
        return []
    best_refit = compare.best_fixed_sigma(rows, main, "_refit")
    refit_text = f"; refit: σ = {best_refit[0]:.3g}" if best_refit is not None else ""
    lines = [
        f"Is MSE + KL sound? Measured in this run ({_run_label(config, rows)}):",
        f"- Best fixed σ on validation data: σ = {best[0]:.3g}, test NLL "
        f"{mean(best[1], 'test/iwae_nll'):.1f} nats per image{refit_text}.",
    ]
    summed, averaged = implicit_sigmas(num_dims).values()
    summed_rows = _members_at(rows, main, summed)
    for name, sigma in (("Summed MSE + KL", summed), ("Mean MSE + KL", averaged)):
        members = _members_at(rows, main, sigma)
        if members:
            lines.append(_cost_line(name, sigma, members, rows, main, per_example))
    if summed_rows:
        lines.append(_collapse_line(summed_rows, best[1], config["model"]["latent_dim"]))
    lines += _fd_line(rows, main)
    lines.append(f"- These are this run's numbers; the stored full-size runs: {stored}.")
    return lines
