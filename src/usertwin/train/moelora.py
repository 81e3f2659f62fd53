"""LoRA on a MoE's fused expert weights as grouped matrix products (issue 27, item 3).

peft adapts a 3-D expert parameter (ParamWrapper) by building W + B A for every expert of the layer before each
forward -- experts x out x in numbers written, read and differentiated per layer and pass, most of them for
experts no token of the batch reaches. Here the tokens are sorted by expert once and each expert's rows go
through x W^T + s (x A^T) B^T as grouped products (torch's grouped_mm on a GPU): the adapters cost two thin
products, and the base weights are only read. The adapters' weights stay peft's own (saving, merging and
loading are unchanged); only the wrapped experts' forward is replaced."""

from __future__ import annotations

import functools

import torch
from torch import nn

PARAMETERS = ("gate_up_proj", "down_proj")  # transformers 5's fused experts (Qwen3-MoE, Mixtral, ...)


def group_lora_experts(model) -> int:
    """Every peft-wrapped experts module of `model` with the fused (experts x out x in) layout runs its adapters
    as grouped products; returns how many were switched. Others (another layout) keep peft's path."""
    from peft.tuners.lora import ParamWrapper

    inner = {id(m.base_layer) for m in model.modules() if isinstance(m, ParamWrapper)}
    switched = 0
    for outer in [m for m in model.modules() if isinstance(m, ParamWrapper) and id(m) not in inner]:
        chain = [outer]  # peft nests one wrapper per adapted parameter
        while isinstance(chain[-1].base_layer, ParamWrapper):
            chain.append(chain[-1].base_layer)
        experts = chain[-1].base_layer
        wrappers = {w.parameter_name: w for w in chain}
        if not _fused_layout(experts, wrappers):
            continue
        outer.forward = functools.partial(_forward, experts, wrappers, outer.forward)
        switched += 1
    return switched


def _fused_layout(experts, wrappers: dict) -> bool:
    params = [getattr(experts, name, None) for name in PARAMETERS]
    return (set(wrappers) <= set(PARAMETERS) and all(isinstance(p, nn.Parameter) and p.ndim == 3 for p in params)
            and not getattr(experts, "is_transposed", False) and not getattr(experts, "has_bias", False)
            and all(w.num_experts == experts.num_experts and w._did_swap_in_out_features for w in wrappers.values()))


def _forward(experts, wrappers: dict, peft_forward, hidden_states, top_k_index, top_k_weights, *args, **kwargs):
    # merged or switched-off adapters, and DeepSpeed ZeRO-3's partitioned weights (gathered by hooks on the
    # modules peft's path calls, which this one does not): peft's path
    if any(w.merged or w.disable_adapters for w in wrappers.values()) or hasattr(experts.down_proj, "ds_id"):
        return peft_forward(hidden_states, top_k_index, top_k_weights, *args, **kwargs)
    k = top_k_index.shape[-1]
    chosen = top_k_index.reshape(-1)
    order = torch.argsort(chosen, stable=True)  # (token, slot) pairs grouped by expert
    counts = torch.bincount(chosen, minlength=experts.num_experts)
    rows = hidden_states[order // k]
    h = _adapted(rows, experts.gate_up_proj, wrappers.get("gate_up_proj"), counts)
    if hasattr(experts, "_apply_gate"):
        h = experts._apply_gate(h)
    else:
        gate, up = h.chunk(2, dim=-1)
        h = experts.act_fn(gate) * up
    h = _adapted(h, experts.down_proj, wrappers.get("down_proj"), counts)
    h = h * top_k_weights.reshape(-1)[order].unsqueeze(-1)
    back = torch.empty_like(h)
    back[order] = h  # (token, slot) order again; summing the slots (not index_add_) is deterministic
    return back.view(-1, k, h.shape[-1]).sum(dim=1).to(hidden_states.dtype)


def _adapted(x, weight, wrapper, counts):
    """x W_e^T (+ s (x A_e^T) B_e^T for each active adapter) for each expert e's rows of x."""
    experts, out, width = weight.shape
    y = _grouped(x, weight.transpose(1, 2), counts)
    if wrapper is None:
        return y
    for name in wrapper.active_adapters:
        if name not in wrapper.lora_A:
            continue
        a = wrapper.lora_A[name].weight  # (experts * r) x in
        b = wrapper.lora_B[name].weight  # out x (r * experts)
        r = a.shape[0] // experts
        a = a.reshape(experts, r, width).transpose(1, 2).to(x.dtype)  # experts x in x r
        # experts x r x out; grouped_mm wants each expert's matrix contiguous (a permuted view is refused)
        b = b.reshape(out, r, experts).permute(2, 1, 0).contiguous().to(x.dtype)
        y = y + _grouped(_grouped(x, a, counts), b, counts) * wrapper.scaling[name]
    return y


def _grouped(x, w, counts):
    """Rows of x (sorted by group; counts[e] of them for group e) times w[e]: torch's grouped_mm where it
    runs (on a GPU: bf16 and 16-byte aligned widths; on a CPU: torch's own, where this torch has it), else one
    product per group."""
    mm = getattr(torch.nn.functional, "grouped_mm", None)
    aligned = all(n * x.element_size() % 16 == 0 for n in w.shape[1:])
    gpu = x.is_cuda and x.dtype == w.dtype == torch.bfloat16 and aligned
    if mm is not None and (gpu or (x.device.type == "cpu" and x.dtype == w.dtype)):
        return mm(x, w, offs=counts.cumsum(0).to(torch.int32))
    parts = torch.split(x, counts.tolist())
    return torch.cat([p @ w[e].to(p.dtype) for e, p in enumerate(parts)])
