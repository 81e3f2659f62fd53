"""`--batch_tokens auto`: the tokens per micro-batch that fill the GPU, and the accumulation that keeps the
optimizer step at `step_tokens`.

Why a probe rather than a formula: the memory a token takes depends on the attention kernel, gradient
checkpointing, LoRA or full weights, the vocabulary and how many tokens carry loss; two short training steps
(forward and backward on a synthetic packed row shaped like the run's data) measure it on the real model.
Memory grows linearly with the tokens of a row for the varlen kernel, so two sizes give the slope.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from usertwin.config import AUTO, BASE_LEARNING_RATE, Config

USABLE = 0.88  # share of the GPU's memory the run may plan for (the allocator fragments; kernels need room)
ADAM_STATES = 3  # optimizer memory per trainable weight, in weights: AdamW's two moments and foreach scratch


@dataclass
class BatchPlan:
    batch_tokens: int  # tokens per micro-batch row
    accumulation: int  # micro-batches per optimizer step
    note: str  # one line for the log: what was chosen and why


GPU_STEP_TOKENS = 65536  # step_tokens unset on a GPU the probe sized: 32 rows of 2,048 tokens
# ... but never so big that an epoch has fewer optimizer steps than this: a few large steps undertrain a small
# data set (douban-dmr's 216,211 tokens would be 3 updates an epoch), and the square-root learning rate rule
# does not make up for 1-3 updates; an explicit step_tokens is kept as given
MIN_STEPS_PER_EPOCH = 32


def fixed_plan(cfg: Config, why: str = "") -> BatchPlan:
    """batch_tokens as set (unset, or auto where no probe runs: max_length) and the accumulation as set; under
    auto an explicit step_tokens still sets the accumulation."""
    tokens = cfg.batch_tokens if isinstance(cfg.batch_tokens, int) else cfg.max_length
    accumulation = cfg.gradient_accumulation_steps
    if cfg.batch_tokens == AUTO and cfg.step_tokens:
        accumulation = max(accumulation, math.ceil(cfg.step_tokens / tokens))
        why += f", {accumulation} micro-batch(es) per optimizer step (step_tokens {cfg.step_tokens:,})"
    return BatchPlan(tokens, accumulation, why)


def plan_batches(cfg: Config, acc, loss_model, target_share: float, boundaries: bool,
                 epoch_tokens: int | None = None) -> BatchPlan:
    """The run's micro-batch size and accumulation. A probe runs only for `auto` on a GPU with the model
    whole on each process (one GPU or DDP); FSDP and DeepSpeed shard the weights only once prepared.
    `epoch_tokens` (the training tokens of an epoch, all processes together) caps an unset step_tokens."""
    if cfg.batch_tokens != AUTO:
        return fixed_plan(cfg)
    from accelerate.utils import DistributedType

    if not torch.cuda.is_available():
        return fixed_plan(cfg, f"batch_tokens auto: {cfg.max_length} (max_length) on a CPU")
    if acc.distributed_type not in (DistributedType.NO, DistributedType.MULTI_GPU):
        return fixed_plan(cfg, f"batch_tokens auto: {cfg.max_length} (max_length) under {acc.distributed_type.value}: "
                               "the probe needs the whole model on each GPU; set --batch_tokens to go bigger")
    fixed, per_token = probe(loss_model, acc.device, cfg, target_share, boundaries)
    trainable = sum(p.numel() * p.element_size() for p in loss_model.parameters() if p.requires_grad)
    total = torch.cuda.get_device_properties(acc.device).total_memory
    room = USABLE * total - torch.cuda.memory_allocated(acc.device) - ADAM_STATES * trainable - fixed
    fits = int(room // per_token) if per_token > 0 else cfg.step_tokens or GPU_STEP_TOKENS
    # the smallest fit over the processes: every rank packs the same rows
    fits = int(acc.reduce(torch.tensor(fits, device=acc.device), reduction="min").item()) \
        if acc.num_processes > 1 else fits
    return choose(cfg, fits, per_token, epoch_tokens, acc.num_processes)


def choose(cfg: Config, fits: int, per_token: float, epoch_tokens: int | None = None,
           processes: int = 1) -> BatchPlan:
    """Whole max_length rows, as many as fit and the step needs; accumulation covers the rest of the step.
    An unset step_tokens is capped so that `epoch_tokens` (None: no cap) make MIN_STEPS_PER_EPOCH steps."""
    step = max(cfg.step_tokens or GPU_STEP_TOKENS, cfg.max_length)
    cap = step_cap(cfg, epoch_tokens, processes)
    capped = cap is not None and cap < step
    step = cap if capped else step
    rows, accumulation = split_step(max(1, step // cfg.max_length), max(1, fits // cfg.max_length),
                                    cfg.gradient_accumulation_steps)
    tokens = rows * cfg.max_length
    gib = per_token * tokens / 2**30
    note = (f"batch_tokens auto: {tokens:,} tokens per micro-batch ({rows} x max_length {cfg.max_length}; about "
            f"{gib:.1f} GiB of activations at {per_token / 2**20:.2f} MiB a token; {max(fits, 0):,} would fit), "
            f"{accumulation} micro-batch(es) per optimizer step of about {tokens * accumulation:,} tokens")
    if capped:
        note += cap_note(cfg, step, tokens * accumulation, epoch_tokens, processes)
    if fits < cfg.max_length:
        note += "; warning: not even one max_length row seems to fit: lower --max_length or use " \
                "--gradient_checkpointing"
    return BatchPlan(tokens, accumulation, note)


def split_step(step_rows: int, fit_rows: int, accumulation: int = 1) -> tuple[int, int]:
    """(rows per micro-batch, micro-batches) for a step of at most `step_rows` rows when `fit_rows` fit at once:
    the most rows a step can have, then the fewest micro-batches. Either the fewest micro-batches that hold the
    step, its rows split evenly (rounded down: never past the step), or full micro-batches as many as the step
    holds. An explicit `accumulation` (gradient_accumulation_steps) splits the step further, never multiplies it."""
    options = []
    for n in (math.ceil(step_rows / fit_rows), step_rows // fit_rows):
        n = max(n, accumulation, 1)
        rows = max(1, min(fit_rows, step_rows // n))
        options.append((rows * n, -n, rows))
    total, minus_n, rows = max(options)
    return rows, -minus_n


def step_cap(cfg: Config, epoch_tokens: int | None, processes: int) -> int | None:
    """The largest step (tokens per process, whole max_length rows, at least one) that gives an epoch of
    `epoch_tokens` MIN_STEPS_PER_EPOCH optimizer steps; None where step_tokens is set or the epoch unknown."""
    if cfg.step_tokens or epoch_tokens is None:
        return None
    rows = epoch_tokens // (MIN_STEPS_PER_EPOCH * processes) // cfg.max_length
    return max(1, rows) * cfg.max_length


def cap_note(cfg: Config, cap: int, step: int, epoch_tokens: int, processes: int) -> str:
    """Why the step is smaller than GPU_STEP_TOKENS: the epoch is small. `cap` and `step` (the planned one,
    smaller where memory or larger where gradient_accumulation_steps says so) are tokens per process."""
    rows = cap // cfg.max_length
    over = f" over {processes} processes" if processes > 1 else ""
    epoch = f"an epoch of {epoch_tokens:,} tokens{over}"
    if step * processes * MIN_STEPS_PER_EPOCH <= epoch_tokens:
        return (f"; capped at {rows} row{'s' if rows > 1 else ''} per step so {epoch} has at least "
                f"{MIN_STEPS_PER_EPOCH} optimizer steps (set --step_tokens to choose)")
    return (f"; capped at {rows} row{'s' if rows > 1 else ''} per step, the fewest, so {epoch} has as many "
            f"optimizer steps as whole rows allow ({MIN_STEPS_PER_EPOCH} wanted; lower --max_length for more, or "
            "set --step_tokens to choose)")


def probe(loss_model, device, cfg: Config, target_share: float, boundaries: bool) -> tuple[float, float]:
    """(fixed bytes, bytes per token) of a training step's peak memory above the weights, from two steps on
    synthetic rows of 1 and 2 max_length sequences. Gradients are dropped and the random state restored after,
    so the run trains exactly as it would have without the probe."""
    from usertwin.train.trainable import batch_tensors

    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state(device)
    loss_model.to(device)
    loss_model.train()
    peaks = {}
    try:
        for n_seqs in (1, 1, 2):  # the first run pays one-time allocations (cuBLAS workspace, kernels)
            loss_model.zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            batch = synthetic_batch(cfg, n_seqs, target_share, vocab=_vocab(loss_model))
            losses = loss_model(**batch_tensors(batch, device, boundaries))
            losses.sum().backward()
            torch.cuda.synchronize(device)
            peaks[n_seqs] = torch.cuda.max_memory_allocated(device) - base
    finally:
        loss_model.zero_grad(set_to_none=True)
        torch.set_rng_state(cpu_rng)
        torch.cuda.set_rng_state(cuda_rng, device)
        torch.cuda.empty_cache()
    per_token = max(peaks[2] - peaks[1], 1) / cfg.max_length
    return max(peaks[1] - per_token * cfg.max_length, 0.0), per_token


def synthetic_batch(cfg: Config, n_seqs: int, target_share: float, vocab: int):
    """A training micro-batch of `n_seqs` max_length sequences (packed into one row, or padded rows), with
    `target_share` of the tokens carrying loss, evenly spread (the output layer's memory scales with them)."""
    from usertwin.sequences.batching import Batch
    from usertwin.text.tokens import IGNORE

    rng = random.Random(0)
    n = cfg.max_length
    every = max(1, round(1 / max(target_share, 1e-6)))
    seq = [rng.randrange(vocab) for _ in range(n)]
    labels = [t if i % every == 0 else IGNORE for i, t in enumerate(seq)]
    targets = sum(1 for x in labels if x != IGNORE)
    if cfg.packing:
        return Batch([seq * n_seqs], [labels * n_seqs], [list(range(n)) * n_seqs], None, targets * n_seqs,
                     n * n_seqs, n_seqs, seq_lens=[n] * n_seqs)
    return Batch([seq] * n_seqs, [labels] * n_seqs, [list(range(n))] * n_seqs, [[1] * n] * n_seqs,
                 targets * n_seqs, n * n_seqs, n_seqs)


def _vocab(loss_model) -> int:
    from usertwin.model.load import causal_lm

    return causal_lm(loss_model.model).get_output_embeddings().weight.shape[0]


def learning_rate(cfg: Config, step_tokens: int) -> tuple[float, str]:
    """The peak learning rate and, when it was worked out, the line that says how: an unset learning_rate is
    the base rate (tuned for one max_length row per optimizer step) times the square root of the rows a step
    holds -- Adam's square-root scaling rule (Malladi et al., 2022, "On the SDEs and Scaling Rules for Adaptive
    Gradient Algorithms"), so a bigger step does not mean fewer, equally small updates."""
    if cfg.learning_rate is not None:
        return cfg.learning_rate, ""
    rows = max(step_tokens / cfg.max_length, 1.0)
    lr = BASE_LEARNING_RATE * math.sqrt(rows)
    if rows == 1:
        return lr, ""
    return lr, (f"learning rate {lr:.3g}: {BASE_LEARNING_RATE:g} x sqrt({rows:g} max_length rows per optimizer step) "
                "(set --learning_rate to choose)")
