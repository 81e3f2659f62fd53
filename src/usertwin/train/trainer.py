"""`usertwin train`: the training loop on accelerate (one process, DDP, FSDP2 or DeepSpeed via its launchers).

Why our own loop rather than transformers' Trainer: batches are token budgets of packed timeline windows
whose contents change every epoch (re-sampling), the loss is normalised by the number of target tokens of
the whole global step (so 2 processes x 1 micro-batch == 1 process x 2 accumulated micro-batches exactly),
and a resumed run must skip to the same micro-batch of the same epoch's deterministic order. All of that is a
few lines here and would be subclass surgery on Trainer. Distribution, mixed precision, gradient
accumulation and checkpoint state stay with accelerate.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from usertwin.atomic import atomic_open, recover_dir, replace_dir, write_json, write_text
from usertwin.config import Config
from usertwin.data.prepare import build_split, prepare, summary
from usertwin.data.timeline import Window
from usertwin.errors import UsertwinError
from usertwin.lock import Lock, acquire
from usertwin.rundir import CACHE_NAME, CHECKPOINT_STATE, LOCK_NAME
from usertwin.text.batching import pack, packed_batch, padded_batch, padded_groups
from usertwin.text.render import Renderer
from usertwin.text.tokens import SequenceEncoder, load_tokenizer
from usertwin.train.model import (
    TargetLoss,
    add_lora,
    apply_liger,
    batch_tensors,
    causal_lm,
    load_model,
    pick_attention,
)


@dataclass
class TrainState:
    """Where the run is: saved with every checkpoint, so --resume continues exactly there."""

    epoch: int = 0
    step_in_epoch: int = 0  # global steps done in the current epoch
    global_step: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    targets_seen: int = 0
    tokens_seen: int = 0
    epochs: list = field(default_factory=list)  # per epoch: targets and tokens it covered
    log: list = field(default_factory=list)


# ---------------------------------------------------------------- data


def sequence_items(seq):
    if isinstance(seq, Window):
        return seq.items, seq.targets
    return list(seq.history) + [seq.target], [seq.target]


class EpochData:
    """The deterministic micro-batches of one split for one epoch."""

    def __init__(self, cfg: Config, prep, renderer, encoder: SequenceEncoder, pad_id: int):
        self.cfg, self.prep, self.renderer, self.encoder, self.pad_id = cfg, prep, renderer, encoder, pad_id

    def sequences(self, split: str, epoch: int):
        if split == "train" and self.cfg.unit == "sample" and self.cfg.resample_every_epoch:
            seqs, _ = build_split(self.cfg, self.renderer, self.prep.timelines, self.prep.splits,
                                  self.prep.lengths, "train", epoch=epoch)
            return seqs
        return self.prep.sequences[split]

    def batches(self, split: str, epoch: int, shuffle: bool) -> list:
        seqs = list(self.sequences(split, epoch))
        if shuffle:
            random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(seqs)
        encoded = [self.encoder.encode(self.prep.timeline(s.user_id), *sequence_items(s)) for s in seqs]
        budget = self.cfg.batch_tokens or self.cfg.max_length
        if self.cfg.packing:
            # pad_packed_rows: every row exactly `budget` long (static shapes for compiled attention kernels)
            pad_to = budget if self.cfg.pad_packed_rows else None
            return [packed_batch([encoded[i] for i in row], pad_to=pad_to, pad_id=self.pad_id)
                    for row in pack(encoded, budget)]
        return [padded_batch([encoded[i] for i in g], pad_id=self.pad_id) for g in padded_groups(encoded, budget)]


def rank_batches(group: list, rank: int, world: int) -> list:
    """This process's micro-batches of one global step: disjoint across ranks, together the whole group."""
    return group[rank::world]


# ---------------------------------------------------------------- run directory


def _run_dir(cfg: Config, overwrite: bool, resume: bool) -> tuple[Path, Lock]:
    """The run directory, locked for this process (OUTPUT_DIR/.lock) before anything in it is touched."""
    if not cfg.output_dir:
        raise UsertwinError("no output directory: pass --output_dir RUN_DIR (or set output_dir in the config)")
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UsertwinError(f"output_dir {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    lock = acquire(out / LOCK_NAME, f"output_dir {out}")
    try:
        busy = any(p.name not in (CACHE_NAME, LOCK_NAME) for p in out.iterdir())
        if busy and not (overwrite or resume):
            raise UsertwinError(f"output_dir {out} is not empty: pass --resume to continue that run or --overwrite "
                                "to replace it")
        if busy and overwrite and not resume:
            for p in out.iterdir():
                if p.name not in (CACHE_NAME, LOCK_NAME):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
    except BaseException:
        lock.release()
        raise
    return out, lock


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((p for p in (out / "checkpoints").glob("step-*") if (p / CHECKPOINT_STATE).is_file()),
                   key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def _dump_config(cfg: Config, out: Path) -> None:
    import yaml

    write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))


# ---------------------------------------------------------------- the loop


def _gathered_for_write(acc, model):
    """DeepSpeed ZeRO-3 keeps each parameter partitioned: gather them to write into, rank 0's values win."""
    import contextlib

    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0)
    return contextlib.nullcontext()


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


class Trainer:
    def __init__(self, cfg: Config, overwrite: bool = False, resume: bool = False, progress: bool = True,
                 tokenizer=None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg, self.progress = cfg, progress
        plugin = None
        if cfg.deepspeed:
            import importlib.util

            from accelerate.utils import DeepSpeedPlugin

            if not Path(cfg.deepspeed).is_file():
                raise UsertwinError(f"DeepSpeed config {cfg.deepspeed} does not exist")
            if importlib.util.find_spec("deepspeed") is None:
                raise UsertwinError("--deepspeed needs the deepspeed package: pip install deepspeed")
            plugin = DeepSpeedPlugin(hf_ds_config=cfg.deepspeed, gradient_clipping=cfg.max_grad_norm,
                                     gradient_accumulation_steps=cfg.gradient_accumulation_steps)
        # cpu=True on a machine without a GPU: accelerate then runs torchrun's processes as gloo DDP
        self.acc = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps, deepspeed_plugin=plugin,
                               cpu=not torch.cuda.is_available())
        _sharded_on_cpu(self.acc, plugin)
        self.main = self.acc.is_main_process
        self.lock = None  # the main process holds OUTPUT_DIR/.lock until run() ends
        if self.main:
            self.out, self.lock = _run_dir(cfg, overwrite, resume)
        else:
            self.out = Path(cfg.output_dir or ".")
        try:
            self.acc.wait_for_everyone()
            self.resume_from = latest_checkpoint(self.out) if resume else None
            if resume and self.resume_from is None and self.main:
                self.say(f"--resume: no checkpoint in {self.out / 'checkpoints'}; starting from the beginning")
            set_seed(cfg.seed)
            self.tokenizer = tokenizer or load_tokenizer(cfg.model, cfg.trust_remote_code)
            self.renderer = Renderer(cfg, self.tokenizer)
            self.prep = prepare(cfg, tokenizer=self.tokenizer, progress=progress and self.main)
            self.encoder = SequenceEncoder(self.renderer, self.tokenizer)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            self.data = EpochData(cfg, self.prep, self.renderer, self.encoder, pad or 0)
            self.state = TrainState()
        except BaseException:
            self.release_lock()
            raise

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()

    # -- helpers

    def say(self, text: str) -> None:
        if self.main:
            print(text, flush=True)

    def _model(self):
        cfg = self.cfg
        attention = cfg.attention if cfg.attention != "auto" else pick_attention(cfg.disable_flash_attn, cfg.packing)
        if attention == "varlen" and not cfg.packing:
            raise UsertwinError("--attention varlen works on packed rows: use it with --packing on")
        model = load_model(cfg.model, cfg.dtype, attention=attention, trust_remote_code=cfg.trust_remote_code,
                           disable_flash_attn=cfg.disable_flash_attn)
        self.attention, self.boundaries = attention, attention == "varlen"
        if cfg.liger_kernel:
            apply_liger(model)
        if cfg.gradient_checkpointing:
            # transformers 5.2x renamed it activation_checkpointing_enable; older releases have only the old name
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if cfg.lora:
            if cfg.gradient_checkpointing:
                model.enable_input_require_grads()
            try:
                model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
            except ValueError as e:
                if "ParamWrapper" not in str(e):
                    raise
                # a MoE on transformers 5: its experts are fused 3-D parameters, which peft adapts without dropout
                raise UsertwinError(f"LoRA on this model's fused expert weights needs --lora_dropout 0 (peft: {e}); "
                                    "or keep LoRA off the experts: --lora_target_modules q_proj,k_proj,v_proj,o_proj"
                                    ) from None
        return model

    def _steps_per_epoch(self, n_batches: int) -> int:
        return math.ceil(n_batches / (self.acc.num_processes * self.cfg.gradient_accumulation_steps))

    # -- evaluation

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict:
        batches = self.data.batches(split, 0, shuffle=False)
        self.loss_model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.acc.device)
        world, rank = self.acc.num_processes, self.acc.process_index
        for i in range(math.ceil(len(batches) / world)):
            # every rank runs the same number of forwards (FSDP gathers weights in each); extras weigh 0
            k = i * world + rank
            b, weight = (batches[k], 1.0) if k < len(batches) else (batches[0], 0.0)
            losses = self.loss_model(**batch_tensors(b, self.acc.device, self.boundaries)).double()
            total[0] += losses.sum() * weight
            total[1] += len(losses) * weight
        total = self.acc.reduce(total, reduction="sum")
        self.loss_model.train()
        loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
        return {"loss": loss, "target_tokens": int(total[1].item()), "batches": len(batches)}

    # -- checkpoints

    def save_checkpoint(self) -> None:
        ckdir = self.out / "checkpoints"
        final = ckdir / f"step-{self.state.global_step}"
        tmp = ckdir / f".tmp-step-{self.state.global_step}"
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp), safe_serialization=True)
        self.acc.wait_for_everyone()  # every rank has written its files (random states, FSDP shards) into tmp
        if self.main:
            write_json(tmp / CHECKPOINT_STATE, vars(self.state) | {"log": self.state.log})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # a checkpoint is complete or absent
            self._prune(ckdir)
        self.acc.wait_for_everyone()

    def _prune(self, ckdir: Path) -> None:
        ckpts = sorted((p for p in ckdir.glob("step-*")), key=lambda p: int(p.name.split("-")[1]))
        for old in ckpts[:-max(1, self.cfg.save_total_limit)]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, path: Path) -> None:
        self.acc.load_state(str(path))
        raw = json.loads((path / CHECKPOINT_STATE).read_text())
        self.state = TrainState(**raw)
        self.say(f"resumed from {path} (epoch {self.state.epoch + 1}, step {self.state.global_step})")

    def save_best(self) -> None:
        best = self.out / "best"
        tmp = self.out / ".tmp-best"
        self.acc.wait_for_everyone()
        unwrapped = self.acc.unwrap_model(self.loss_model).model
        state_dict = self.acc.get_state_dict(self.loss_model)
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            inner = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
            unwrapped.save_pretrained(tmp, state_dict=inner, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            replace_dir(tmp, best)  # the previous best/ stays until the new one is complete
        self.acc.wait_for_everyone()

    def restore_best(self) -> None:
        """Load best/ weights back into the model (adapter or full) on every rank: sharded models (FSDP2, ZeRO-3)
        get them through their own gather/scatter, so the final evaluation is of the best model everywhere."""
        best = recover_dir(self.out / "best")
        name = "adapter_model.safetensors" if self.cfg.lora else "model.safetensors"
        if not (best / name).is_file():
            return
        from safetensors.torch import load_file

        weights = load_file(str(best / name))
        if not self.cfg.lora:
            own = {k[len("model."):] for k in self.loss_model.state_dict()} if self.acc.is_fsdp2 else \
                set(self.acc.unwrap_model(self.loss_model).model.state_dict())
            if not set(weights) <= own:
                # save_pretrained writes the original (hub) layout: transformers 5 fuses some weights on load
                # (a MoE's per-expert projections -> one 3-D parameter per layer), so load best/ the same way
                weights = load_model(str(best), self.cfg.dtype, attention="sdpa",
                                     trust_remote_code=self.cfg.trust_remote_code).state_dict()
        if self.acc.is_fsdp2:
            return self._restore_fsdp2(weights)
        model = self.acc.unwrap_model(self.loss_model).model
        with _gathered_for_write(self.acc, model):
            if self.cfg.lora:
                from peft import set_peft_model_state_dict

                result = set_peft_model_state_dict(model, weights)
            else:
                result = model.load_state_dict(weights, strict=False)
        if result.unexpected_keys:
            self.say(f"warning: best/ has {len(result.unexpected_keys)} weight(s) the model does not know (e.g. "
                     f"{result.unexpected_keys[0]}): the final evaluation is not of the best model")

    def _restore_fsdp2(self, weights: dict) -> None:
        """best/ holds full tensors under the saved names; FSDP2's parameters are DTensor shards named after the
        wrapped module: rank 0 passes them by the module's names and torch scatters each rank its shard."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        own = {}
        for key in self.loss_model.state_dict():
            inner = key[len("model."):]
            # peft saves adapters without the adapter's name: ...lora_A.weight for ...lora_A.default.weight
            own[inner.replace(".default.", ".") if self.cfg.lora else inner] = key
        unknown = [k for k in weights if k not in own]
        if unknown:
            self.say(f"warning: best/ has {len(unknown)} weight(s) the model does not know (e.g. {unknown[0]}): "
                     "the final evaluation is not of the best model")
            return
        full = {own[k]: v for k, v in weights.items()} if self.main else {}
        set_model_state_dict(self.loss_model, full, options=StateDictOptions(full_state_dict=True,
                                                                             broadcast_from_rank0=True, strict=False))

    # -- logging

    def log(self, row: dict) -> None:
        row = {"step": self.state.global_step, "epoch": self.state.epoch + 1, **row, "time": round(time.time(), 3)}
        self.state.log.append(row)
        if self.main:  # append-only by design (one complete line per write; a resumed run goes on appending)
            with open(self.out / "logs.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if self.tb is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k not in ("step", "epoch", "time"):
                        self.tb.add_scalar(k, v, self.state.global_step)
            if self.wandb is not None:
                self.wandb.log(row, step=self.state.global_step)

    def _open_loggers(self) -> None:
        self.tb = self.wandb = None
        if not self.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        except ImportError:
            self.say("tensorboard is not installed: logging to logs.jsonl only")
        if self.cfg.wandb_project:
            try:
                import wandb
            except ImportError:
                raise UsertwinError("--wandb_project needs the wandb package: pip install wandb") from None
            self.wandb = wandb
            wandb.init(project=self.cfg.wandb_project, name=self.cfg.wandb_run_name, config=self.cfg.to_dict())

    # -- the run

    def run(self) -> dict:
        try:
            result = self._run()
            if self.acc.num_processes > 1:  # leave together; torch wants the group destroyed before exit
                self.acc.wait_for_everyone()
                self.acc.end_training()
            return result
        finally:  # also on errors and Ctrl-C: the next run may take the directory
            self.release_lock()

    def _run(self) -> dict:
        cfg, acc = self.cfg, self.acc
        start = time.time()
        if self.main:
            _dump_config(cfg, self.out)
            write_json(self.out / "data_summary.json", summary(self.prep))
            self._write_preview()
        model = self._model()
        self.loss_model = TargetLoss(model)
        if cfg.deepspeed:  # accelerate fills the config's "auto" bucket sizes from model.config.hidden_size
            self.loss_model.config = causal_lm(model).config
        params = [p for p in self.loss_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        first = self.data.batches("train", 0, shuffle=True)
        steps_per_epoch = self._steps_per_epoch(len(first))
        total_steps = cfg.max_steps or steps_per_epoch * cfg.max_epochs
        from transformers import get_scheduler

        scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                                  num_training_steps=total_steps)
        # the scheduler stays outside accelerate.prepare: its wrapper would step it once per process
        self.loss_model, optimizer = acc.prepare(self.loss_model, optimizer)
        acc.register_for_checkpointing(scheduler)
        self.optimizer, self.scheduler = optimizer, scheduler
        self._open_loggers()
        trainable = sum(getattr(p, "ds_numel", p.numel()) for p in params)  # ZeRO-3: partitioned
        self.say(f"model {cfg.model}: {trainable:,} trainable parameters ({'LoRA r=' + str(cfg.lora_r) if cfg.lora else 'full'}),"
                 f" {acc.num_processes} process(es), {steps_per_epoch} steps per epoch, {total_steps} steps in all")
        if self.resume_from is not None:
            self.load_checkpoint(self.resume_from)
            self.initial_val = next((r["val_loss"] for r in self.state.log if r.get("event") == "eval_start"), None)
        elif not cfg.eval_at_start:
            self.initial_val = None
        else:
            ev = self.evaluate()
            self.initial_val = ev["loss"]
            self.say(f"validation loss before training: {ev['loss']:.4f} ({ev['target_tokens']} target tokens)")
            self.log({"event": "eval_start", "val_loss": ev["loss"]})
        self._loop(first, steps_per_epoch, total_steps)
        st = self.state
        if st.best_step is not None and st.best_step == st.global_step:
            final = {"loss": st.best_val_loss}  # the weights in hand are best/ and were just evaluated
        else:
            self.restore_best()
            final = self.evaluate()
        wall = time.time() - start
        result = {
            "steps": self.state.global_step, "epochs": self.state.epoch + (1 if self.state.step_in_epoch else 0),
            "targets_per_epoch": self.prep.stats["train"].targets, "tokens_per_epoch": self.prep.stats["train"].tokens,
            "targets_seen": self.state.targets_seen, "tokens_seen": self.state.tokens_seen,
            "per_epoch": self.state.epochs,
            "tokens_per_second": round(self.state.tokens_seen / max(wall, 1e-9), 1),
            "val_loss_before": self.initial_val, "val_loss_after": final["loss"],
            "best_val_loss": self.state.best_val_loss, "best_step": self.state.best_step,
            "stopped_early": self.state.stopped_early, "wall_seconds": round(wall, 1), "unit": cfg.unit,
            "processes": acc.num_processes,
        }
        if torch.cuda.is_available():  # every process's peak (one GPU each)
            peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=acc.device)
            result["peak_memory_gib"] = [round(x, 2) for x in acc.gather(peak).tolist()]
        if self.main:
            write_json(self.out / "summary.json", result)
            if self.tb is not None:
                self.tb.close()
        before = "not measured" if self.initial_val is None else f"{self.initial_val:.4f}"
        self.say(f"validation loss after training: {final['loss']:.4f} (before: {before}); "
                 f"best model in {self.out / 'best'}; run in {self.out}")
        return result

    def _watch_sigint(self) -> None:
        """The first Ctrl-C asks for a checkpoint at the end of the current step; a second one stops at once."""
        import signal
        import threading

        self._sigint = False
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if self._sigint:
                raise KeyboardInterrupt
            self._sigint = True
            self.say("interrupt: saving a checkpoint after this step (Ctrl-C again to stop now)")

        signal.signal(signal.SIGINT, handler)

    def _interrupted(self) -> bool:
        if self.acc.num_processes == 1:
            return self._sigint
        # every rank stops at the same step, or the checkpoint would hang (one small all-reduce per step)
        flag = torch.tensor(1.0 if self._sigint else 0.0, device=self.acc.device)
        return self.acc.reduce(flag, reduction="sum").item() > 0

    def _loop(self, first_batches, steps_per_epoch, total_steps) -> None:
        cfg, acc, st = self.cfg, self.acc, self.state
        world, accum = acc.num_processes, cfg.gradient_accumulation_steps
        per_step = world * accum
        self.loss_model.train()
        self._watch_sigint()
        epoch = st.epoch
        while epoch < cfg.max_epochs and st.global_step < total_steps and not st.stopped_early:
            batches = first_batches if epoch == 0 else self.data.batches("train", epoch, shuffle=True)
            n_steps = self._steps_per_epoch(len(batches))
            if not any(e["epoch"] == epoch + 1 for e in st.epochs):
                st.epochs.append({"epoch": epoch + 1, "targets": sum(b.n_targets for b in batches),
                                  "target_tokens": sum(b.n_target_tokens for b in batches),
                                  "tokens": sum(b.n_tokens for b in batches), "micro_batches": len(batches)})
            tick, tokens_at_tick, targets_at_tick = time.time(), st.tokens_seen, 0
            # losses stay on the device between log lines: no host sync inside a step
            interval = torch.zeros(2, dtype=torch.float64, device=acc.device)
            for step in range(st.step_in_epoch if epoch == st.epoch else 0, n_steps):
                group = batches[step * per_step:(step + 1) * per_step]
                global_target_tokens = sum(b.n_target_tokens for b in group)
                mine = rank_batches(group, acc.process_index, world)
                for m in range(accum):
                    # ranks without a batch left in the last step run a zero-weight one (keeps DDP in step)
                    b, weight = (mine[m], 1.0) if m < len(mine) else (group[0], 0.0)
                    with acc.accumulate(self.loss_model):
                        losses = self.loss_model(**batch_tensors(b, acc.device, self.boundaries))
                        # normalised by the target tokens of the whole global step; accelerate divides by
                        # accum and DDP averages over ranks, so scale back by both
                        loss = losses.sum() * weight * world * accum / max(global_target_tokens, 1)
                        acc.backward(loss)
                        if acc.sync_gradients and cfg.max_grad_norm:
                            acc.clip_grad_norm_(self.loss_model.parameters(), cfg.max_grad_norm)
                        self.optimizer.step()
                        if acc.sync_gradients:
                            self.scheduler.step()
                        self.optimizer.zero_grad()
                    interval[0] += losses.detach().double().sum() * weight
                interval[1] += global_target_tokens / world
                targets_at_tick += global_target_tokens
                st.global_step += 1
                st.step_in_epoch = step + 1
                st.epoch = epoch
                st.targets_seen += sum(b.n_targets for b in group)
                st.tokens_seen += sum(b.n_tokens for b in group)
                if st.global_step % cfg.logging_steps == 0 or step == n_steps - 1:
                    total = acc.reduce(interval, reduction="sum").tolist()  # waits for the device
                    dt = max(time.time() - tick, 1e-9)
                    self.log({"loss": total[0] / max(total[1], 1), "lr": self.scheduler.get_last_lr()[0],
                              "tokens_per_second": round((st.tokens_seen - tokens_at_tick) / dt, 1),
                              "target_tokens_per_second": round(targets_at_tick / dt, 1),
                              "interval_tokens": st.tokens_seen - tokens_at_tick,
                              "interval_target_tokens": targets_at_tick})
                    tick, tokens_at_tick, targets_at_tick = time.time(), st.tokens_seen, 0
                    interval.zero_()
                end_of_epoch = step == n_steps - 1
                if end_of_epoch:
                    st.epoch, st.step_in_epoch = epoch + 1, 0
                if (cfg.eval_steps and st.global_step % cfg.eval_steps == 0) or (end_of_epoch and not cfg.eval_steps):
                    self._eval_and_maybe_stop()
                elif cfg.save_steps and st.global_step % cfg.save_steps == 0:
                    self.save_checkpoint()
                if self._interrupted():
                    self.save_checkpoint()
                    self.say(f"interrupted: checkpoint saved at step {st.global_step} in {self.out / 'checkpoints'};"
                             " continue with --resume")
                    raise KeyboardInterrupt
                if st.stopped_early or st.global_step >= total_steps:
                    break
            epoch += 1
            if st.step_in_epoch:  # left the epoch early (max_steps / early stop)
                break

    def _eval_and_maybe_stop(self) -> None:
        cfg, st = self.cfg, self.state
        ev = self.evaluate()
        improved = st.best_val_loss is None or ev["loss"] < st.best_val_loss - cfg.early_stopping_threshold
        if improved:
            st.best_val_loss, st.best_step, st.bad_evals = ev["loss"], st.global_step, 0
            self.save_best()
        else:
            st.bad_evals += 1
            if cfg.early_stopping_patience and st.bad_evals >= cfg.early_stopping_patience:
                st.stopped_early = True
        self.log({"event": "eval", "val_loss": ev["loss"], "best_val_loss": st.best_val_loss})
        self.say(f"step {st.global_step}: validation loss {ev['loss']:.4f}"
                 f"{' (best)' if improved else ''}{' - early stop' if st.stopped_early else ''}")
        self.save_checkpoint()

    def _write_preview(self, n: int = 3) -> None:
        from usertwin.text.preview import marked_text

        parts = []
        for seq in self.prep.sequences["train"][:n]:
            items, targets = sequence_items(seq)
            rendered = self.renderer.render(self.prep.timeline(seq.user_id), items, targets)
            parts.append(f"=== user {seq.user_id!r}: {len(targets)} target(s), {len(items) - len(targets)} history "
                         f"item(s); loss on the \u27ea...\u27eb spans ===\n{marked_text(rendered, color=False)}\n")
        with atomic_open(self.out / "training_samples_preview.txt") as f:
            f.write("\n".join(parts))


def train(cfg: Config, overwrite: bool = False, resume: bool = False, progress: bool = True) -> dict:
    return Trainer(cfg, overwrite=overwrite, resume=resume, progress=progress).run()
