"""The accelerator of a training run: one process, DDP, FSDP2 or DeepSpeed ZeRO, on GPUs or on CPU processes."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from usertwin.config import Config
from usertwin.errors import UsertwinError


def deepspeed_plugin(cfg: Config):
    """accelerate's DeepSpeed plugin for --deepspeed CONFIG.json, or None without it."""
    if not cfg.deepspeed:
        return None
    import importlib.util

    from accelerate.utils import DeepSpeedPlugin

    if not Path(cfg.deepspeed).is_file():
        raise UsertwinError(f"DeepSpeed config {cfg.deepspeed} does not exist")
    if importlib.util.find_spec("deepspeed") is None:
        raise UsertwinError("--deepspeed needs the deepspeed package: pip install deepspeed")
    return DeepSpeedPlugin(hf_ds_config=cfg.deepspeed, gradient_clipping=cfg.max_grad_norm,
                           gradient_accumulation_steps=cfg.gradient_accumulation_steps)


def make_accelerator(cfg: Config):
    from accelerate import Accelerator

    plugin = deepspeed_plugin(cfg)
    # cpu=True on a machine without a GPU: accelerate then runs torchrun's processes as gloo DDP
    acc = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps, deepspeed_plugin=plugin,
                      cpu=not torch.cuda.is_available())
    _sharded_on_cpu(acc, plugin)
    return acc


def _sharded_on_cpu(acc, deepspeed_plugin=None) -> None:
    """FSDP or DeepSpeed asked for (accelerate launch with such a config, ACCELERATE_USE_FSDP=true, --deepspeed) on
    CPU processes.

    accelerate turns FSDP and DeepSpeed on only for GPU-like devices: with cpu=True its state stays MULTI_CPU and
    the run would silently be plain DDP. torch's fully_shard and DeepSpeed's CPU accelerator both run on gloo, so
    switch the state to what was asked for: CPU runs (the tests, CPU-only clusters) then go through the same
    sharding code as GPUs. One CPU process gets no switch: --deepspeed there is refused.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if deepspeed_plugin is not None and acc.distributed_type == DistributedType.NO and not torch.cuda.is_available():
        raise UsertwinError("--deepspeed on CPU needs several processes (torchrun --nproc_per_node=2 ...): "
                            "accelerate runs one CPU process without DeepSpeed")
    if acc.distributed_type != DistributedType.MULTI_CPU:
        return
    if deepspeed_plugin is not None:
        deepspeed_plugin.set_mixed_precision(acc.state.mixed_precision)
        deepspeed_plugin.select(_from_accelerator_state=True)
        acc.state.deepspeed_plugins = deepspeed_plugin
        kind = DistributedType.DEEPSPEED
    elif os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        kind = DistributedType.FSDP
    else:
        return
    # AcceleratorState copies PartialState's fields each time it is built: set the type in both
    PartialState().distributed_type = acc.state.distributed_type = kind
