"""Useful matmul FLOPs of the MLP and conv VAEs: a train step, an IWAE evaluation, a sweep
group's work.

A Dense layer n_in → n_out costs 2·n_in·n_out FLOPs (multiply + add). Default config, D = 784,
hidden (512, 512), k = 32, one decoder output map:
  encoder  784·512 + 512·512 + 512·(32 + 32)      (mean and log-variance heads)
  decoder  (32·512 + 512·512 + 512·784) per z sample
= 2·(696,320 + 679,936) = 2,752,512 FLOPs per example per sample of z.
Biases, activations, the likelihood, Adam and the RNG are not counted: they are O(D), not
O(D·width), and are the overhead the benchmark and the sweep-efficiency figure expose. A family
whose decoder also predicts a log scale (`num_outputs` = 2) has an output layer twice as wide.

The conv VAE (`vae_jax.models`): a 4×4 convolution costs 2·16·C_in·C_out per OUTPUT pixel, a 4×4
stride-2 transposed one 2·16·C_in·C_out per INPUT pixel (each input pixel meets every tap once),
the multiply-adds of the plain layers (`vae_jax.conv`'s sub-pixel form does 9/4 of them in its
transposed layers; the surplus multiplies zeros and is not useful work). Hidden (16, 32), k = 32,
28×28×1, one output map:
  encoder  14·14·16·1·16 + 7·7·16·16·32 + 1568·64      (1568 = 7·7·32 flattened)
  decoder  32·1568 + 7·7·16·32·16 + 14·14·16·16·1
= 2·(551,936 + 501,760) = 2,107,392 FLOPs per example per sample of z (0.81 GFLOP a train step
of batch 128, against the MLP's 1.06).
The linear model is not counted (None).
"""

from __future__ import annotations

import math

import ml_collections

from vae_jax.objective import Problem


def mlp_forward_flops(
    *,
    event_size: int,
    hidden_sizes: tuple[int, ...],
    latent_dim: int,
    num_samples: int,
    num_outputs: int = 1,
) -> int:
    """Matmul FLOPs of ONE example's forward pass: the encoder once, the decoder per z sample."""
    widths = list(hidden_sizes)
    encoder = [event_size, *widths]
    encoder_flops = (
        sum(a * b for a, b in zip(encoder, encoder[1:], strict=False)) + widths[-1] * 2 * latent_dim
    )
    decoder = [latent_dim, *reversed(widths), event_size * num_outputs]
    decoder_flops = sum(a * b for a, b in zip(decoder, decoder[1:], strict=False))
    return 2 * (encoder_flops + num_samples * decoder_flops)


def conv_forward_flops(
    *,
    event_shape: tuple[int, ...],
    hidden_sizes: tuple[int, ...],
    latent_dim: int,
    num_samples: int,
    num_outputs: int = 1,
) -> int:
    """Multiply-add FLOPs of ONE example's forward pass through the conv VAE (the encoder once,
    the decoder per z sample); image sides divisible by 2**len(hidden_sizes)."""
    height, width, channels = event_shape
    widths = [channels, *hidden_sizes]
    pixels = [height * width // 4 ** (i + 1) for i in range(len(hidden_sizes))]  # after layer i
    convs = sum(16 * p * a * b for p, a, b in zip(pixels, widths, widths[1:], strict=False))
    flat = pixels[-1] * widths[-1]
    encoder_flops = convs + flat * 2 * latent_dim
    out_widths = [*widths[-2:0:-1], channels * num_outputs]
    deconvs = sum(  # a transposed layer's input is the next-smaller encoder activation
        16 * p * a * b for p, a, b in zip(pixels[::-1], widths[:0:-1], out_widths, strict=True)
    )
    decoder_flops = latent_dim * flat + deconvs
    return 2 * (encoder_flops + num_samples * decoder_flops)


def model_forward_flops(
    *,
    kind: str,
    event_shape: tuple[int, ...],
    hidden_sizes: tuple[int, ...],
    latent_dim: int,
    num_samples: int,
    num_outputs: int = 1,
) -> int | None:
    """`mlp_forward_flops` or `conv_forward_flops` by model kind; None for the linear model."""
    common = dict(
        hidden_sizes=tuple(hidden_sizes),
        latent_dim=latent_dim,
        num_samples=num_samples,
        num_outputs=num_outputs,
    )
    if kind == "conv":
        return conv_forward_flops(event_shape=tuple(event_shape), **common)
    if kind == "mlp" and hidden_sizes:
        return mlp_forward_flops(event_size=math.prod(event_shape), **common)
    return None


def problem_train_step_flops(problem: Problem) -> int | None:
    """Useful FLOPs of one train step of `problem`'s model (MLP or conv) at its batch size and
    number of z samples: 3 × `model_forward_flops` × batch; None for the linear model."""
    model = problem.model
    forward = model_forward_flops(
        kind=model.kind,
        event_shape=tuple(problem.train_x.shape[1:]),
        hidden_sizes=tuple(model.hidden_sizes),
        latent_dim=model.latent_dim,
        num_samples=problem.num_samples,
        num_outputs=problem.likelihood.num_outputs,
    )
    return None if forward is None else 3 * forward * problem.batch_size


def forward_matmul_flops(config: ml_collections.ConfigDict, event_size: int) -> int:
    """`mlp_forward_flops` of the config's model, `train.num_samples` samples of z."""
    return mlp_forward_flops(
        event_size=event_size,
        hidden_sizes=tuple(config.model.hidden_sizes),
        latent_dim=config.model.latent_dim,
        num_samples=config.train.num_samples,
    )


def train_step_flops(config: ml_collections.ConfigDict, event_size: int, batch_size: int) -> int:
    """FLOPs of one train step: forward + backward ≈ 3 × forward matmul FLOPs, times the batch.

    The backward pass does two matmuls per layer (gradient w.r.t. the input and the weights), each
    as large as the forward one. (Strictly the first layer needs no input gradient, so the exact
    count is 3·F − 2·784·512·B; we keep the conventional 3·F, 1.057 GFLOP at batch 128.)
    """
    return 3 * forward_matmul_flops(config, event_size) * batch_size


def iwae_flops_per_example(config: ml_collections.ConfigDict, event_size: int, k: int) -> int:
    """Evaluation FLOPs of one example: encoder once, decoder K + 2 times (IWAE, ELBO, mean)."""
    one_sample = config.copy_and_resolve_references()
    one_sample.train.num_samples = k + 2
    return forward_matmul_flops(one_sample, event_size)


def sweep_group_flops(
    problem: Problem, *, iwae_samples: int, num_members: int, trained_steps: int
) -> dict[str, int | None]:
    """{'train_flops', 'evaluate_flops'} of a sweep group: `num_members` members (padding copies
    are no useful work) × `trained_steps` steps, and `evaluate.make_evaluate_member`'s passes.

    Evaluation, per member: `make_evaluate` (encoder once, decoder K + 2 times) on the first
    len(test) training examples, the validation and the test split, and again on validation and
    test at the refit scale; the refit's IWAE profile (decoder K times) and residual moments (one
    sample) on validation; an optimal-σ family's moments (one sample) on the whole training split.
    Not counted: the learned σ's validation fits during training, sample quality. None for the
    linear model.
    """
    model = problem.model

    def forward(num_samples: int) -> int | None:
        return model_forward_flops(
            kind=model.kind,
            event_shape=tuple(problem.test_x.shape[1:]),
            hidden_sizes=tuple(model.hidden_sizes),
            latent_dim=model.latent_dim,
            num_samples=num_samples,
            num_outputs=problem.likelihood.num_outputs,
        )

    if forward(1) is None:
        return {"train_flops": None, "evaluate_flops": None}

    step = 3 * forward(problem.num_samples) * problem.batch_size
    num_train, num_val, num_test = map(len, (problem.train_x, problem.val_x, problem.test_x))
    scored = min(num_train, num_test) + num_val + num_test
    per_member = forward(iwae_samples + 2) * scored
    if problem.likelihood.optimal_scale:
        per_member += forward(1) * num_train
    if problem.likelihood.refits and num_val:
        per_member += forward(iwae_samples + 2) * (num_val + num_test)
        per_member += (forward(iwae_samples) + forward(1)) * num_val
    return {
        "train_flops": step * trained_steps * num_members,
        "evaluate_flops": per_member * num_members,
    }
