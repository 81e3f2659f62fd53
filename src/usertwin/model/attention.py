"""Packed rows on flash kernels without the flash-attn package: torch's variable-length attention
(`torch.nn.attention.varlen`, PyTorch >= 2.10 on CUDA) registered with transformers' attention interface as
`--attention varlen`.

Why: sdpa cannot run a packed row (several sequences, positions restarting) on its flash kernel — transformers
builds a row x row block mask and sdpa then computes and stores the whole row's attention. varlen attention
takes the sequence boundaries (cu_seq_lens) instead and touches only the diagonal blocks. The boundaries come
from the packer on the host (no device sync); anything without them (padded batches, generation) falls back to
sdpa with the usual masks.
"""

from __future__ import annotations

import inspect

import torch

NAME = "varlen"


def available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention import varlen  # noqa: F401
    except ImportError:
        return False
    return True


def _kernel():
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def _call(q, k, v, cu, max_len: int, scale: float | None, kernel=None):
    """q: (T, Hq, D), k/v: (T, Hkv, D) -> (T, Hq, D), causal within each [cu[i], cu[i+1])."""
    kernel = kernel or _kernel()
    params = inspect.signature(kernel).parameters
    if q.shape[1] != k.shape[1] and "enable_gqa" not in params:
        groups = q.shape[1] // k.shape[1]  # older releases: repeat the shared key/value heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    kwargs = {"scale": scale}
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = q.shape[1] != k.shape[1]
    # torch 2.10/2.11 spell causal `is_causal=True`; later releases `window_size=(-1, 0)`
    kwargs.update({"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)})
    return kernel(q, k, v, cu, cu, max_len, max_len, **kwargs)


def _boundaries(position_ids: torch.Tensor):
    """cu_seq_lens from restarting positions of one row (slow path: syncs; the trainer passes them)."""
    pos = position_ids.reshape(-1)
    starts = torch.nonzero(pos == 0).flatten()
    cu = torch.cat([starts, starts.new_tensor([pos.numel()])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def varlen_forward(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0,
                   cu_seq_lens_q=None, max_length_q=None, position_ids=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    one_row = query.shape[0] == 1 and attention_mask is None and query.shape[2] == key.shape[2]
    if cu_seq_lens_q is None and one_row and position_ids is not None and query.shape[2] > 1:
        cu_seq_lens_q, max_length_q = _boundaries(position_ids)
    if cu_seq_lens_q is None or not one_row:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # (1, H, T, D) -> (T, H, D) for the kernel, back to (1, T, H, D) as transformers expects
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = _call(q, k, v, cu_seq_lens_q, int(max_length_q), scaling)
    return out.unsqueeze(0), None


def _mask(*args, attention_mask=None, **kwargs):
    """No mask for packed rows (the boundaries go to the kernel); sdpa's mask for padded batches."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_forward)
    AttentionMaskInterface.register(NAME, _mask)


def boundaries_of(seq_lens: list[int]) -> tuple[list[int], int]:
    """cu_seq_lens and the longest length of one packed row, on the host."""
    cu = [0]
    for n in seq_lens:
        cu.append(cu[-1] + n)
    return cu, max(seq_lens)
