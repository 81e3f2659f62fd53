"""Models: load (hub id, folder or GGUF), LoRA or full fine-tuning, and the target-only loss.

The loss never builds full-vocabulary logits for positions without labels: the backbone's hidden states are
gathered at the (shifted) target positions first, and only those go through the output head.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsertwinError
from .tokenize import IGNORE, resolve_model


def pick_dtype(name: str = "auto") -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise UsertwinError(f"dtype must be auto, float32, bfloat16 or float16, not {name!r}")
    return table[name]


def pick_attention(disable_flash_attn: bool = False) -> str:
    """flash_attention_2 when installed on a GPU (packed sequences via varlen), else sdpa, which honours
    packed position_ids through transformers' packed-sequence masks."""
    if (not disable_flash_attn and torch.cuda.is_available()
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


def load_model(model: str, dtype: str = "auto", attention: str | None = None, trust_remote_code: bool = False,
               disable_flash_attn: bool = False):
    from transformers import AutoModelForCausalLM

    src, gguf = resolve_model(model)
    kwargs = {"dtype": pick_dtype(dtype), "attn_implementation": attention or pick_attention(disable_flash_attn),
              "trust_remote_code": trust_remote_code}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        return AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:
        raise UsertwinError(f"cannot load model {model!r}: {str(e).splitlines()[0]}") from None


def add_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules: str = "all-linear"):
    from peft import LoraConfig, get_peft_model

    targets = target_modules
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def causal_lm(model):
    """The transformers *ForCausalLM under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class TargetLoss(nn.Module):
    """Wraps a causal LM so that forward() returns per-token losses on target positions only.

    Wrapping (rather than calling the backbone from outside) keeps DDP / FSDP / DeepSpeed hooks in the path.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, labels, position_ids=None, attention_mask=None):
        lm = causal_lm(self.model)
        backbone = getattr(lm, lm.base_model_prefix)
        out = backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                       use_cache=False)
        hidden = out.last_hidden_state[:, :-1]
        shifted = labels[:, 1:]
        keep = shifted != IGNORE
        logits = lm.get_output_embeddings()(hidden[keep])
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return F.cross_entropy(logits.float(), shifted[keep], reduction="none")


def batch_tensors(batch, device) -> dict:
    t = {"input_ids": torch.tensor(batch.input_ids, device=device),
         "labels": torch.tensor(batch.labels, device=device),
         "position_ids": torch.tensor(batch.position_ids, device=device)}
    if batch.attention_mask is not None:
        t["attention_mask"] = torch.tensor(batch.attention_mask, device=device)
    return t
