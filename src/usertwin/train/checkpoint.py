"""A run's checkpoints (checkpoints/step-N: resumable state) and its best weights (best/), for one process,
DDP, FSDP2 and DeepSpeed ZeRO-3 alike.

Every folder is written under a temporary name and renamed into place, so a kill leaves it complete or absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from usertwin import quiet
from usertwin.atomic import recover_dir, replace_dir, write_json, write_text
from usertwin.model.load import load_model
from usertwin.rundir import CHECKPOINT_STATE, RunDir
from usertwin.version import __version__


@dataclass
class TrainState:
    """Where the run is: saved with every checkpoint, so --resume continues exactly there."""

    epoch: int = 0
    step_in_epoch: int = 0  # global steps done in the current epoch
    global_step: int = 0
    best_val_loss: float | None = None
    best_val_rating_rmse: float | None = None  # --select_by rating_rmse: the best step's
    best_step: int | None = None
    last_eval_step: int | None = None  # the step of the last validation: the end of the run evaluates if not last
    bad_evals: int = 0
    stopped_early: bool = False
    targets_seen: int = 0
    tokens_seen: int = 0
    batch_tokens: int | None = None  # the micro-batch plan (batch_tokens auto may probe): a resume keeps it
    accumulation: int | None = None
    epochs: list = field(default_factory=list)  # per epoch: targets and tokens it covered
    log: list = field(default_factory=list)


def _gathered_for_write(acc, model):
    """DeepSpeed ZeRO-3 keeps each parameter partitioned: gather them to write into, rank 0's values win."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0)
    return contextlib.nullcontext()


def _whole_model_per_process(acc) -> bool:
    """One process or DDP: each holds the whole model, and accelerate writes its state dict as one file."""
    from accelerate.utils import DistributedType

    return getattr(acc, "distributed_type", None) in (DistributedType.NO, DistributedType.MULTI_GPU,
                                                      DistributedType.MULTI_CPU)


def _keep_trainable(models, weights, output_dir) -> None:
    """accelerate's save-state hook: keep only the trainable weights (LoRA adapters) of each model. The frozen base
    is rebuilt from the base model on resume; writing it would make a checkpoint of a 30 B model 61 GB."""
    for model, state in zip(models, weights):
        keep = {name for name, p in model.named_parameters() if p.requires_grad}
        for name in [k for k in state if k not in keep]:
            del state[name]


_UNKNOWN_WEIGHTS = ("warning: best/ has {n} weight(s) the model does not know (e.g. {first}): "
                    "the final evaluation is not of the best model")


class Checkpoints:
    """Saves and loads one run's state and best weights; every rank calls every method (they synchronise)."""

    def __init__(self, acc, run: RunDir, cfg, say, debug: bool = False):
        self.acc, self.run, self.cfg, self.say, self.debug = acc, run, cfg, say, debug
        self.main = acc.is_main_process
        self.trainable_only = getattr(cfg, "lora", False) and _whole_model_per_process(acc)
        if self.trainable_only:
            acc.register_save_state_pre_hook(_keep_trainable)

    # -- resumable state

    def save(self, state: TrainState) -> None:
        final = self.run.checkpoint(state.global_step)
        tmp = RunDir.temporary(final)
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()
        with quiet.log_hidden(quiet.ACCELERATE_SAVE_LOGGER, quiet.SHARED_TENSOR_REMOVED, show=self.debug):
            self.acc.save_state(str(tmp), safe_serialization=True)
        self.acc.wait_for_everyone()  # every rank has written its files (random states, FSDP shards) into tmp
        if self.main:
            write_json(tmp / CHECKPOINT_STATE, vars(state) | {"log": state.log})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # a checkpoint is complete or absent
            self._prune()
        self.acc.wait_for_everyone()

    def _prune(self) -> None:
        for old in self.run.checkpoint_dirs()[:-max(1, self.cfg.save_total_limit)]:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def peek(path: Path) -> TrainState:
        """A checkpoint's train state, without loading its weights."""
        return TrainState(**json.loads((path / CHECKPOINT_STATE).read_text()))

    def load(self, path: Path) -> TrainState:
        # a LoRA checkpoint holds the adapters only: the frozen base comes from the model as built
        self.acc.load_state(str(path), **({"strict": False} if self.trainable_only else {}))
        state = TrainState(**json.loads((path / CHECKPOINT_STATE).read_text()))
        self.say(f"resumed from {path} (epoch {state.epoch + 1}, step {state.global_step})")
        return state

    # -- best/

    def save_best(self, loss_model, tokenizer) -> None:
        best = self.run.best
        tmp = RunDir.temporary(best)
        self.acc.wait_for_everyone()
        unwrapped = self.acc.unwrap_model(loss_model).model
        state_dict = self.acc.get_state_dict(loss_model)
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            inner = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
            # usertwin never resizes the vocabulary, so an adapter needs no copy of the embeddings; peft's "auto"
            # would look for the base model's config.json (absent for a GGUF base: a warning) or ask the Hub
            extra = {"save_embedding_layers": False} if self.cfg.lora else {}
            unwrapped.save_pretrained(tmp, state_dict=inner, safe_serialization=True, **extra)
            tokenizer.save_pretrained(tmp)
            write_text(tmp / "README.md", best_card(self.cfg))  # over peft's blank template
            replace_dir(tmp, best)  # the previous best/ stays until the new one is complete
        self.acc.wait_for_everyone()

    def restore_best(self, loss_model) -> None:
        """Load best/ weights back into the model (adapter or full) on every rank: sharded models (FSDP2, ZeRO-3)
        get them through their own gather/scatter, so the final evaluation is of the best model everywhere."""
        weights = self._best_weights(loss_model)
        if weights is None:
            return
        if self.acc.is_fsdp2:
            return self._restore_fsdp2(loss_model, weights)
        model = self.acc.unwrap_model(loss_model).model
        with _gathered_for_write(self.acc, model):
            if self.cfg.lora:
                from peft import set_peft_model_state_dict

                result = set_peft_model_state_dict(model, weights)
            else:
                result = model.load_state_dict(weights, strict=False)
        if result.unexpected_keys:
            self.say(_UNKNOWN_WEIGHTS.format(n=len(result.unexpected_keys), first=result.unexpected_keys[0]))

    def _best_weights(self, loss_model) -> dict | None:
        """best/'s tensors under the names the model's own state dict uses, or None when there is no best/."""
        best = recover_dir(self.run.best)
        name = "adapter_model.safetensors" if self.cfg.lora else "model.safetensors"
        if not (best / name).is_file():
            return None
        from safetensors.torch import load_file

        weights = load_file(str(best / name))
        if self.cfg.lora:
            return weights
        own = {k[len("model."):] for k in loss_model.state_dict()} if self.acc.is_fsdp2 else \
            set(self.acc.unwrap_model(loss_model).model.state_dict())
        if not set(weights) <= own:
            # save_pretrained writes the original (hub) layout: transformers 5 fuses some weights on load
            # (a MoE's per-expert projections -> one 3-D parameter per layer), so load best/ the same way
            weights = load_model(str(best), self.cfg.dtype, attention="sdpa",
                                 trust_remote_code=self.cfg.trust_remote_code).state_dict()
        return weights

    def _restore_fsdp2(self, loss_model, weights: dict) -> None:
        """best/ holds full tensors under the saved names; FSDP2's parameters are DTensor shards named after the
        wrapped module: rank 0 passes them by the module's names and torch scatters each rank its shard."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        own = {}
        for key in loss_model.state_dict():
            inner = key[len("model."):]
            # peft saves adapters without the adapter's name: ...lora_A.weight for ...lora_A.default.weight
            own[inner.replace(".default.", ".") if self.cfg.lora else inner] = key
        unknown = [k for k in weights if k not in own]
        if unknown:
            self.say(_UNKNOWN_WEIGHTS.format(n=len(unknown), first=unknown[0]))
            return
        full = {own[k]: v for k, v in weights.items()} if self.main else {}
        set_model_state_dict(loss_model, full, options=StateDictOptions(full_state_dict=True,
                                                                        broadcast_from_rank0=True, strict=False))


def best_card(cfg, summary: dict | None = None) -> str:
    """best/README.md: what the weights are and how to use them (peft would leave its template of 39 "[More
    Information Needed]"). `summary`: the run's summary.json, once training ended."""
    what = (f"A LoRA adapter (r={cfg.lora_r}, alpha={cfg.lora_alpha}) for" if cfg.lora
            else "The fully fine-tuned weights of")
    lines = ["# usertwin twin: best weights\n",
             f"{what} the base model `{cfg.model}`, trained by usertwin {__version__} on the records `{cfg.data}` "
             f"(max_length {cfg.max_length}, prompt style `{cfg.prompt_style}`, ablation `{cfg.ablation}`).\n"]
    if summary:
        loss = summary.get("best_val_loss")
        chosen = {"best": "lowest validation loss", **summary}["best"]  # (summary.json says how it chose)
        lines.append(f"Chosen by {chosen}: step {summary.get('best_step')} of "
                     f"{summary.get('steps')}" + (f", validation loss {loss:.4f}" if isinstance(loss, float) else "")
                     + ". The run's summary.json has the rest; `usertwin evaluate` writes metrics.json.\n")
    lines.append("""## How to use

The twin needs its prompts rendered as training rendered them, so load the run directory (this folder's parent:
config.yaml, twin.json, these weights) with usertwin:

```python
from usertwin import Twin
twin = Twin.load("RUN")          # add records="RECORDS.jsonl" to name users by id
twin.rating_distribution(user="12", item="Heat (1995) (Action, Crime, Thriller): ")
```

`usertwin export RUN -o DIR` writes a plain transformers model (LoRA merged) with a full model card, for vLLM,
TGI or llama.cpp.
""")
    return "\n".join(lines)
