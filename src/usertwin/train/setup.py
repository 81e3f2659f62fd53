"""The accelerator of a training run: one process, DDP, FSDP2 or DeepSpeed ZeRO, on GPUs or on CPU processes."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from usertwin.config import Config
from usertwin.errors import UsertwinError


def select_devices(gpu: str | None, local_rank: int | None) -> None:
    """--gpu IDS: CUDA_VISIBLE_DEVICES, set before CUDA starts (so this process sees only those GPUs, the first as
    cuda:0). --local_rank N (torch.distributed.launch and deepspeed launchers pass it): LOCAL_RANK, which
    accelerate reads to pick this process's GPU, unless the launcher set it already (then they must agree)."""
    if gpu is not None:
        ids = [part.strip() for part in str(gpu).split(",")]
        if not all(part.isdigit() for part in ids):
            raise UsertwinError(f"command line: --gpu takes GPU numbers separated by commas (e.g. 1 or 0,1), got {gpu!r}")
        if torch.cuda.is_initialized():
            raise UsertwinError("command line: --gpu came after CUDA started in this process; set "
                                "CUDA_VISIBLE_DEVICES before starting it")
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    if local_rank is not None and local_rank >= 0:
        launched = os.environ.get("LOCAL_RANK")
        if launched is not None and launched != str(local_rank):
            raise UsertwinError(f"command line: --local_rank {local_rank} disagrees with LOCAL_RANK={launched} set by "
                                f"the launcher")
        os.environ["LOCAL_RANK"] = str(local_rank)


# the DeepSpeed entries that depend on the batch: accelerate fills train_micro_batch_size_per_gpu only from a
# dataloader it prepares, and usertwin prepares none (its batches are packed rows built by the trainer)
BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
              "gradient_clipping")


def fill_deepspeed_auto(ds: dict, cfg: Config, world_size: int, source: str = "DeepSpeed config") -> dict:
    """A copy of a DeepSpeed config whose batch entries are filled from our settings where they say "auto".

    A micro-batch here is one row of up to batch_tokens tokens (packed), so DeepSpeed's micro-batch size is 1;
    the step is gradient_accumulation_steps micro-batches on each of world_size processes (train_batch_size,
    which DeepSpeed derives when it is left out). Entries given as numbers must agree with the settings
    (DeepSpeed would otherwise count a different step than the trainer takes). The bucket sizes' "auto" stay for
    accelerate, which fills them from the model's hidden size."""
    out = dict(ds)
    wanted = {"train_micro_batch_size_per_gpu": out.get("train_micro_batch_size_per_gpu", "auto"),
              "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
              "gradient_clipping": cfg.max_grad_norm}
    if wanted["train_micro_batch_size_per_gpu"] == "auto":
        wanted["train_micro_batch_size_per_gpu"] = 1
    wanted["train_batch_size"] = (wanted["train_micro_batch_size_per_gpu"] * cfg.gradient_accumulation_steps
                                  * world_size)
    for key in BATCH_KEYS:
        given = out.get(key, "auto")
        if given == "auto" and key == "train_batch_size":
            # left to DeepSpeed, which derives it from the other two and the world size it sees: ZeRO-3's
            # zero.Init reads the config while loading the model, before its own process group, and counts 1
            out.pop(key, None)
        elif given == "auto":
            out[key] = wanted[key]
        elif given != wanted[key] and key != "train_micro_batch_size_per_gpu":
            setting = {"gradient_accumulation_steps": "gradient_accumulation_steps",
                       "gradient_clipping": "max_grad_norm",
                       "train_batch_size": "train_micro_batch_size_per_gpu x gradient_accumulation_steps x processes"}
            raise UsertwinError(f"{source}: {key} is {given}, but usertwin's {setting[key]} gives {wanted[key]}; "
                                f"write \"auto\" there (filled from the settings) or change the setting")
    return out


def read_deepspeed_config(path) -> dict:
    """A DeepSpeed JSON config, as a dict."""
    import json

    try:
        ds = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsertwinError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(ds, dict):
        raise UsertwinError(f"{path}: a DeepSpeed config is a JSON object, got {type(ds).__name__}")
    return ds


def deepspeed_plugin(cfg: Config):
    """accelerate's DeepSpeed plugin for --deepspeed CONFIG.json (its batch "auto" entries filled here), or None
    without it."""
    if not cfg.deepspeed:
        return None
    import importlib.util

    from accelerate.utils import DeepSpeedPlugin

    if not Path(cfg.deepspeed).is_file():
        raise UsertwinError(f"DeepSpeed config {cfg.deepspeed} does not exist")
    ds = fill_deepspeed_auto(read_deepspeed_config(cfg.deepspeed), cfg, int(os.environ.get("WORLD_SIZE", "1")),
                             str(cfg.deepspeed))
    if importlib.util.find_spec("deepspeed") is None:
        raise UsertwinError("--deepspeed needs the deepspeed package: pip install deepspeed")
    return DeepSpeedPlugin(hf_ds_config=ds, gradient_clipping=cfg.max_grad_norm,
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
