"""Loading a causal language model: a hub id, a folder, a GGUF file or random:DIR; its dtype, attention kernel
and expert implementation. Training (train/trainable.py) and twins (twin/engine.py) both load through here."""

from __future__ import annotations

import importlib.util

import torch

from usertwin.errors import UsertwinError
from usertwin.hub import random_base, resolve_model

# The seed of a random:DIR base, fixed rather than --seed: train, predict, Twin.load and export each rebuild the
# base from the model string alone, and must get the same weights for best/'s adapter to mean anything.
RANDOM_BASE_SEED = 0


def pick_dtype(name: str = "auto") -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise UsertwinError(f"dtype must be auto, float32, bfloat16 or float16, not {name!r}")
    return table[name]


def pick_attention(disable_flash_attn: bool = False, packed: bool = False) -> str:
    """flash_attention_2 when installed on a GPU; else, for packed rows on a GPU, torch's varlen flash kernel
    (attention.py); else sdpa, which honours packed position_ids through transformers' block masks."""
    from usertwin.model import attention

    if disable_flash_attn or not torch.cuda.is_available():
        return "sdpa"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return attention.NAME if packed and attention.available() else "sdpa"


def load_model(model: str, dtype: str = "auto", attention: str | None = None, trust_remote_code: bool = False,
               disable_flash_attn: bool = False):
    from transformers import AutoModelForCausalLM

    from usertwin.model import attention as varlen

    src, gguf = resolve_model(model)
    attention = attention or pick_attention(disable_flash_attn)
    if attention == varlen.NAME:
        if not varlen.available():
            raise UsertwinError("--attention varlen needs a CUDA GPU and torch >= 2.10 (torch.nn.attention.varlen)")
        varlen.register()
    kwargs = {"dtype": pick_dtype(dtype), "attn_implementation": attention, "trust_remote_code": trust_remote_code}
    folder = random_base(model)
    if folder is not None:
        return random_model(folder, kwargs)
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        loaded = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:
        raise UsertwinError(f"cannot load model {model!r}: {str(e).splitlines()[0]}") from None
    if gguf:
        _forget_gguf(loaded)
    return loaded


def random_model(folder, kwargs: dict):
    """The model of folder/config.json with seeded random weights, built on the GPU when there is one (a 30 B
    model never passes through host memory, nor the disk). The caller's random state is left as it was.
    The same seed on the same kind of device gives the same weights; a run trained on a GPU is rebuilt there."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        trust_remote_code = kwargs["trust_remote_code"]  # the user's setting, passed through
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UsertwinError(f"cannot read {folder / 'config.json'}: {str(e).splitlines()[0]}") from None
    cuda = torch.cuda.is_available()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []), \
            torch.device("cuda" if cuda else "cpu"):
        torch.manual_seed(RANDOM_BASE_SEED)
        return AutoModelForCausalLM.from_config(config, **kwargs)


def _forget_gguf(model) -> None:
    """transformers dequantizes a GGUF file into ordinary float weights but keeps its GGUF "quantizer", which
    then refuses save_pretrained: a fully fine-tuned GGUF model could not write best/. The weights in memory
    are plain tensors, so drop the marker; best/ is then an ordinary safetensors model."""
    model.hf_quantizer = None
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def use_experts(model, implementation: str) -> None:
    """--experts: how the MoE's expert layers compute; auto leaves transformers' choice. Set after loading (a
    config.json cannot carry it: transformers drops it on save)."""
    if implementation == "auto":
        return
    if not expert_parameters(model):
        raise UsertwinError(f"--experts {implementation}: {type(model).__name__} has no fused expert weights "
                            "(not a mixture of experts on transformers 5); leave --experts auto")
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(implementation)
    else:
        model.config._experts_implementation = implementation


def liger_choice(setting: bool | None) -> tuple[bool, str]:
    """Whether training swaps in liger-kernel's fused kernels, and a line saying why when it was not asked:
    unset, they are on where they pay -- a GPU with the package installed (+43% tokens/s at 1.7B on an H100,
    README) -- and a GPU without the package gets a hint."""
    if setting is not None:
        return setting, ""
    if not torch.cuda.is_available():
        return False, ""
    if importlib.util.find_spec("liger_kernel") is None:
        return False, ("note: liger-kernel is not installed; its fused kernels train faster on a GPU: pip install "
                       "'usertwin[gpu]' (or pass --no_liger_kernel to silence this)")
    return True, "liger-kernel: fused RMSNorm, SwiGLU and RoPE on (a GPU and the package are here; --no_liger_kernel: off)"


def apply_liger(model) -> None:
    """Swap the model's RMSNorm, SwiGLU and rotary embedding for liger-kernel's fused Triton kernels (in place,
    before LoRA). Their losses stay off: the target-only loss below already skips prompt positions."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        raise UsertwinError("--liger_kernel needs the liger-kernel package (and a GPU): pip install liger-kernel") \
            from None
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)


def expert_parameters(model) -> list[str]:
    """The fused expert weights of a MoE (transformers 5 keeps each layer's experts as 3-D parameters, e.g.
    mlp.experts.gate_up_proj: experts x out x in), as peft's target_parameters suffixes ("experts.gate_up_proj")."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if param.ndim == 3:
                names.add(f"{module_name.rsplit('.', 1)[-1]}.{param_name}")
    return sorted(names)


def causal_lm(model):
    """The transformers *ForCausalLM under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
