"""The model as training runs it: loaded (model/load.py), with gradient checkpointing, LoRA (or full weights),
and wrapped in the target-only loss.

The loss never builds full-vocabulary logits for positions without labels: the backbone's hidden states are
gathered at the (shifted) target positions first, and only those go through the output head.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

from usertwin.errors import UsertwinError
from usertwin.model.load import (
    apply_liger,
    causal_lm,
    expert_parameters,
    liger_choice,
    load_model,
    pick_attention,
    use_experts,
)
from usertwin.text.tokens import IGNORE
from usertwin.train.moelora import group_lora_experts


def add_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: str = "all-linear",
             grouped_experts: bool = True):
    """LoRA as the config asks. grouped_experts: a MoE's expert adapters as grouped products (moelora.py) where
    the experts compute so; False keeps peft's W + BA path (benchmarks and tests compare the two)."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    experts = expert_parameters(model) if targets == "all-linear" else []
    if experts:
        return _moe_lora(model, r, alpha, dropout, experts, grouped_experts)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    import warnings

    with warnings.catch_warnings():  # peft's own MoE patterns for v4 expert names it did not need
        warnings.filterwarnings("ignore", "The following (rank|alpha)_pattern keys did not match", RuntimeWarning)
        return get_peft_model(model, config)


def linear_layers(model) -> tuple[list[str], list[str]]:
    """(leaf names of the nn.Linear layers that get adapters, full names of those that do not): every linear
    layer but the output head and a MoE's router (a linear `gate` beside `experts`; transformers 5's Qwen3-MoE
    router is no nn.Linear at all): adapting the router would move which experts a token reaches."""
    head = model.get_output_embeddings()
    keep, skip = set(), []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not isinstance(module, nn.Linear):
            continue
        parent, _, leaf = name.rpartition(".")
        router = leaf == "gate" and hasattr(modules.get(parent), "experts")
        if module is head or router:
            skip.append(name)
        else:
            keep.add(leaf)
    return sorted(keep), skip


def _moe_lora(model, r: int, alpha: int, dropout: float, experts: list[str], grouped: bool = True):
    """"all-linear" on a MoE: the linear layers (attention, any dense MLP) and the experts' fused weights, not
    the router. peft adapts a parameter (ParamWrapper) without dropout (x cannot be factored out of x @ (W + BA)),
    and one LoraConfig has one dropout: build with none, then give the linear layers theirs."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer, ParamWrapper

    modules, skipped = linear_layers(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=modules, exclude_modules=skipped,
                        target_parameters=experts, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    if dropout > 0:
        for module in peft_model.modules():
            if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper):
                for name in module.lora_dropout:
                    module.lora_dropout[name] = nn.Dropout(p=dropout)
    # the experts' adapters as grouped products (moelora.py), unless --experts asked for eager or batched_mm
    if grouped and getattr(causal_lm(peft_model).config, "_experts_implementation", None) in (None, "grouped_mm"):
        group_lora_experts(peft_model)
    return peft_model


def training_attention(cfg) -> str:
    """The attention kernel a training run uses: --attention, or the fastest available for its layout."""
    attention = cfg.attention if cfg.attention != "auto" else pick_attention(cfg.disable_flash_attn, cfg.packing)
    if attention == "varlen" and not cfg.packing:
        raise UsertwinError("--attention varlen works on packed rows: use it with --packing on")
    return attention


def build_model(cfg, attention: str, progress: bool = True, debug: bool = False):
    """The model to train as the config asks: kernels, gradient checkpointing, then LoRA (or full weights).
    progress: transformers' loading bars; debug: its warnings that quiet.py hides."""
    from usertwin import quiet

    with quiet.loading_bars(progress):
        model = load_model(cfg.model, cfg.dtype, attention=attention, trust_remote_code=cfg.trust_remote_code,
                           disable_flash_attn=cfg.disable_flash_attn)
    use_experts(model, cfg.experts)
    liger, why = liger_choice(cfg.liger_kernel)
    if why:
        print(why)
    if liger:
        apply_liger(model)
    if cfg.gradient_checkpointing:
        _checkpoint_activations(model)
    if not cfg.lora:
        return model
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    try:
        with quiet.warning_hidden(FutureWarning, quiet.GRADIENT_CHECKPOINTING_DEPRECATED, show=debug):
            model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    except ValueError as e:
        if "ParamWrapper" not in str(e):
            raise
        # a MoE on transformers 5: its experts are fused 3-D parameters, which peft adapts without dropout
        raise UsertwinError(f"LoRA on this model's fused expert weights needs --lora_dropout 0 (peft: {e}); "
                            "or keep LoRA off the experts: --lora_target_modules q_proj,k_proj,v_proj,o_proj"
                            ) from None
    return mixed_precision(model, cfg.lora_precision)


def mixed_precision(model, precision: str = "auto"):
    """LoRA's adapters computed in the model's dtype (--lora_precision mixed): peft keeps the adapters' weights in
    float32 and casts each layer's bf16 input to float32 first -- a full-width copy per adapted layer, then
    float32 matmuls and a float32 sum, which made LoRA slower than full fine-tuning. Here the input stays as it
    is and torch.autocast (TargetLoss) runs the adapters' matmuls in the model's dtype; the weights, their
    gradients and the optimizer stay float32. Sets model.autocast_dtype (None: no autocast)."""
    from peft.tuners.lora import Linear, LoraLayer, ParamWrapper

    dtype = causal_lm(model).dtype
    low = dtype in (torch.bfloat16, torch.float16)
    model.autocast_dtype = dtype if low and precision in ("auto", "mixed") else None
    if model.autocast_dtype is None:
        return model
    for module in model.modules():
        # a MoE's adapted expert parameters (ParamWrapper) build W + BA themselves: left as peft has them
        if isinstance(module, LoraLayer) and not isinstance(module, ParamWrapper):
            module.cast_input_dtype_enabled = False
            if isinstance(module, Linear):
                module.forward = functools.partial(_fused_lora, module, module.forward)
    return model


def _fused_lora(layer, peft_forward, x, *args, **kwargs):
    """A plain LoRA linear layer's base(x) + s B A dropout(x), the scaling and the sum done by one addmm on the
    rank-r product (peft multiplies and adds over the layer's full output width, forward and backward: the
    largest share of LoRA's GPU time after mixed precision, benchmarks/results/lora_speed_h100.md). Anything
    else (several or no active adapters, merged, switched off, DoRA and other variants, a bias, extra
    arguments, DeepSpeed ZeRO-3's partitioned weights) takes peft's forward."""
    active = layer.active_adapters
    name = active[0] if len(active) == 1 else None
    if (name not in layer.lora_A or args or kwargs or layer.disable_adapters or layer.merged
            or name in getattr(layer, "lora_variant", {}) or layer.lora_B[name].bias is not None
            or hasattr(layer.lora_B[name].weight, "ds_id")):  # ZeRO-3 gathers B only when lora_B is called
        return peft_forward(x, *args, **kwargs)
    result = layer.base_layer(x)
    h = layer.lora_A[name](layer.lora_dropout[name](x))
    b = layer.lora_B[name].weight
    flat = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), b.t().to(h.dtype),
                       alpha=layer.scaling[name])
    return flat.view(result.shape)


def _checkpoint_activations(model) -> None:
    # transformers 5.2x renamed it activation_checkpointing_enable; older releases have only the old name
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


class TargetLoss(nn.Module):
    """Wraps a causal LM so that forward() returns per-token losses on target positions only.

    Wrapping (rather than calling the backbone from outside) keeps DDP / FSDP / DeepSpeed hooks in the path.
    With `rating_scale` (train/ratingloss.ScaleTokens) and a batch's rating marks (rating_rows: which target rows
    are ratings' decision tokens, rating_values: their true values), it returns (per-token losses, squared
    errors of the expected ratings).
    """

    def __init__(self, model, rating_scale=None):
        super().__init__()
        self.model = model
        self.rating_scale = rating_scale

    def forward(self, input_ids, labels, position_ids=None, attention_mask=None, target_index=None,
                target_labels=None, cu_seq_lens=None, max_length=None, rating_rows=None, rating_values=None):
        lm = causal_lm(self.model)
        backbone = getattr(lm, lm.base_model_prefix)
        extra = {}
        if cu_seq_lens is not None:  # packed row boundaries for varlen attention (attention.py)
            extra = {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": max_length,
                     "max_length_k": max_length}
        dtype = getattr(self.model, "autocast_dtype", None)  # LoRA in mixed precision (mixed_precision)
        with torch.autocast(input_ids.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            out = backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                           use_cache=False, **extra)
        hidden = out.last_hidden_state[:, :-1]
        if target_index is None:  # boolean indexing: one device sync
            shifted = labels[:, 1:]
            keep = shifted != IGNORE
            hidden, target_labels = hidden[keep], shifted[keep]
        else:  # positions computed on the host (batch_tensors): no sync
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, target_index)
        logits = lm.get_output_embeddings()(hidden)
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        losses = F.cross_entropy(logits.float(), target_labels, reduction="none")
        if rating_rows is None:
            return losses
        from usertwin.train.ratingloss import squared_errors

        return losses, squared_errors(logits.index_select(0, rating_rows), rating_values, self.rating_scale)


def batch_tensors(batch, device, boundaries: bool = False) -> dict:
    """Tensors of a Batch, with the target positions (and, for varlen attention, the packed sequences'
    boundaries) worked out on the host so that the step never waits on the device."""
    from usertwin.model.attention import boundaries_of

    labels = _long(batch.labels)
    # the shifted labels' non-ignored positions, flattened over rows of width-1 (TargetLoss's index_select)
    shifted = labels[:, 1:]
    index = torch.nonzero(shifted.reshape(-1) != IGNORE).flatten()
    t = {"input_ids": _long(batch.input_ids), "labels": labels,
         "position_ids": _long(batch.position_ids), "target_index": index,
         "target_labels": shifted.reshape(-1).index_select(0, index)}
    if batch.attention_mask is not None:
        t["attention_mask"] = _long(batch.attention_mask)
    if batch.ratings is not None:
        t.update(_rating_tensors(batch, index))
    if boundaries and batch.seq_lens is not None:
        cu, longest = boundaries_of(batch.seq_lens)
        t["cu_seq_lens"] = torch.tensor(cu, dtype=torch.int32)
        t["max_length"] = longest
    # a copy from pageable memory waits for the device's queue to drain; from pinned memory it does not, so the
    # host can prepare the next step while the device still works on this one
    pinned = torch.device(device).type == "cuda"
    return {k: (v.pin_memory() if pinned else v).to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in t.items()}


def _long(rows: list[list[int]]) -> torch.Tensor:
    """Equal-width rows of ints as an int64 tensor: numpy reads a flat iterator about 8x faster than
    torch.tensor reads nested lists (19 against 2.4 ms for a 65,536-token row)."""
    import itertools

    import numpy as np

    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=len(rows) * len(rows[0]))
    return torch.from_numpy(flat).view(len(rows), -1)


def _rating_tensors(batch, index: torch.Tensor) -> dict:
    """The target rows (positions in `index`, the sorted flattened shifted positions) where the batch's ratings'
    decision tokens are predicted, and the true ratings."""
    width = len(batch.labels[0]) - 1
    flat = torch.tensor([r * width + col - 1 for r, col, _ in batch.ratings], dtype=torch.long)
    rows = torch.searchsorted(index, flat)
    return {"rating_rows": rows,
            "rating_values": torch.tensor([v for _, _, v in batch.ratings], dtype=torch.float32)}
