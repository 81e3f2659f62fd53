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
import random
import time

import torch

from usertwin.atomic import write_json, write_text
from usertwin.config import Config
from usertwin.errors import UsertwinError
from usertwin.model.load import causal_lm
from usertwin.rundir import RunDir
from usertwin.sequences.batching import pack, packed_batch, padded_batch, padded_groups
from usertwin.sequences.prepare import Prepared, build_split, prepare
from usertwin.text.render import Renderer
from usertwin.text.tokens import SequenceEncoder, load_tokenizer
from usertwin.train.autobatch import BatchPlan, fixed_plan, learning_rate, plan_batches
from usertwin.train.checkpoint import Checkpoints, TrainState, best_card
from usertwin.train.progress import Progress
from usertwin.train.ratingloss import rated, scale_tokens
from usertwin.train.run import open_run, write_run_start
from usertwin.train.setup import make_accelerator
from usertwin.train.trainable import TargetLoss, batch_tensors, build_model, training_attention

# ---------------------------------------------------------------- data


class EpochData:
    """The deterministic micro-batches of one split for one epoch."""

    def __init__(self, cfg: Config, prep: Prepared, renderer, tokenizer):
        self.cfg, self.prep, self.renderer, self.tokenizer = cfg, prep, renderer, tokenizer
        self.encoder = SequenceEncoder(renderer, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad or 0
        self.budget = fixed_plan(cfg).batch_tokens  # tokens per micro-batch; the trainer may plan another
        self.scale = None  # --rating_loss_weight: the scale's decision tokens (train/ratingloss.py)
        if cfg.rating_loss_weight > 0:
            from usertwin.data.facts import rating_scale

            self.scale = scale_tokens(rating_scale(prep.timelines), tokenizer, renderer.fmt.eot)

    @property
    def varies(self) -> bool:
        """Whether each epoch draws its own training targets (and so its own number of micro-batches); prepare
        refuses resample_every_epoch where nothing is drawn (data/applies.py)."""
        return self.cfg.resample_every_epoch

    def sequences(self, split: str, epoch: int):
        if split == "train" and self.varies:
            # the tokenizer measures block-layout samples against max_length as prepare did
            seqs, _ = build_split(self.cfg, self.renderer, self.prep.timelines, self.prep.splits,
                                  self.prep.lengths, "train", self.tokenizer, epoch=epoch)
            return seqs
        return self.prep.sequences[split]

    def batches(self, split: str, epoch: int, shuffle: bool) -> list:
        return self.group(self.encoded(split, epoch, shuffle))

    def encoded(self, split: str, epoch: int, shuffle: bool) -> list:
        seqs = list(self.sequences(split, epoch))
        if shuffle:
            random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(seqs)
        encoded = [self.encoder.encode(self.prep.timeline(s.user_id), *s.items_and_targets()) for s in seqs]
        if self.scale is None:
            return encoded
        return [rated(e, self.prep.timeline(s.user_id), self.scale) for e, s in zip(encoded, seqs)]

    def group(self, encoded: list) -> list:
        """Micro-batches of `budget` tokens (set by the trainer's BatchPlan)."""
        budget = self.budget
        if self.cfg.packing:
            # pad_packed_rows: every row exactly `budget` long (static shapes for compiled attention kernels)
            pad_to = budget if self.cfg.pad_packed_rows else None
            return [packed_batch([encoded[i] for i in row], pad_to=pad_to, pad_id=self.pad_id)
                    for row in pack(encoded, budget)]
        return [padded_batch([encoded[i] for i in g], pad_id=self.pad_id) for g in padded_groups(encoded, budget)]


def rank_batches(group: list, rank: int, world: int) -> list:
    """This process's micro-batches of one global step: disjoint across ranks, together the whole group."""
    return group[rank::world]


class Loggers:
    """Where log rows go: logs.jsonl, TensorBoard (when installed) and W&B (when asked); the main process only."""

    def __init__(self, cfg: Config, run: RunDir, main: bool, say):
        self.run, self.main, self.tb, self.wandb = run, main, None, None
        if not main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run.tensorboard))
        except ImportError:
            say("tensorboard is not installed: logging to logs.jsonl only")
        if cfg.wandb_project:
            try:
                import wandb
            except ImportError:
                raise UsertwinError(WANDB_MISSING) from None
            self.wandb = wandb
            wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=cfg.to_dict())

    def write(self, row: dict, step: int) -> None:
        if not self.main:
            return
        # append-only by design (one complete line per write; a resumed run goes on appending)
        with open(self.run.logs, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch", "time"):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class _CtrlC:
    """The first Ctrl-C asks for a checkpoint at the end of the current step; a second one stops at once."""

    def __init__(self, acc, say):
        self.acc, self.say, self.asked, self.previous = acc, say, False, None

    def watch(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if self.asked:
                raise KeyboardInterrupt
            self.asked = True
            self.say("interrupt: saving a checkpoint after this step (Ctrl-C again to stop now)")

        self.previous = signal.signal(signal.SIGINT, handler)

    def __enter__(self) -> _CtrlC:
        self.watch()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Ctrl-C means "stop" again once the loop is over (the final evaluation, or a caller's own code)."""
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def asked_anywhere(self) -> bool:
        if self.acc.num_processes == 1:
            return self.asked
        # every rank stops at the same step, or the checkpoint would hang (one small all-reduce per step)
        flag = torch.tensor(1.0 if self.asked else 0.0, device=self.acc.device)
        return self.acc.reduce(flag, reduction="sum").item() > 0


class _Interval:
    """Loss and throughput since the last log line. The loss sums stay on the device (no host sync per step)."""

    def __init__(self, device, tokens_seen: int):
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # weighted loss, target tokens per rank
        self.ratings = torch.zeros(2, dtype=torch.float64, device=device)  # squared errors, ratings (this rank)
        self.restart(tokens_seen)

    def restart(self, tokens_seen: int) -> None:
        self.tick, self.tokens_at_tick, self.target_tokens = time.time(), tokens_seen, 0
        self.sums.zero_()
        self.ratings.zero_()


# ---------------------------------------------------------------- the loop


def _loss_model(cfg: Config, attention: str, progress: bool, debug: bool, scale=None) -> TargetLoss:
    model = build_model(cfg, attention, progress=progress, debug=debug)
    loss_model = TargetLoss(model, rating_scale=scale)
    if cfg.deepspeed:  # accelerate fills the config's "auto" bucket sizes from model.config.hidden_size
        loss_model.config = causal_lm(model).config
    return loss_model


def _optimizer(cfg: Config, params: list, total_steps: int, lr: float):
    """AdamW and the learning-rate schedule (warm-up, then cfg.lr_scheduler) over the run's steps."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup,
                              num_training_steps=total_steps)
    return optimizer, scheduler


class Trainer:
    """Trains on prepared data in a locked run directory; `run()` returns (and writes) the run's summary."""

    def __init__(self, cfg: Config, acc, run: RunDir, prep: Prepared, renderer, tokenizer, resume_from=None,
                 progress: bool = True, debug: bool = False, val_scorer=None):
        self.cfg, self.acc, self.run_dir, self.prep, self.tokenizer = cfg, acc, run, prep, tokenizer
        self.val_scorer = val_scorer
        self.main = acc.is_main_process
        self.resume_from = resume_from
        self.renderer = renderer
        self.show_progress, self.debug = progress and self.main, debug
        self.progress = None
        self.data = EpochData(cfg, prep, self.renderer, tokenizer)
        self.checkpoints = Checkpoints(acc, run, cfg, self.say, debug=debug)
        self.state = TrainState()
        # without validation targets there is nothing to select by: best/ gets the last weights
        self.selects = prep.stats["val"].targets > 0
        if cfg.select_by == "rating_rmse" and acc.num_processes > 1:
            raise UsertwinError(f"--select_by rating_rmse scores the validation split in one process; this run has "
                                f"{acc.num_processes}: use --select_by loss, or train on one GPU")
        if cfg.select_by == "rating_rmse" and val_scorer is None:
            raise UsertwinError("--select_by rating_rmse needs a validation scorer: train with `usertwin train`, or "
                                "pass val_scorer=usertwin.eval.valrating.val_rating_rmse")

    def say(self, text: str) -> None:
        if not self.main:
            return
        if self.progress is not None:
            self.progress.write(text)
        else:
            print(text, flush=True)

    def _steps_per_epoch(self, n_batches: int) -> int:
        return math.ceil(n_batches / (self.acc.num_processes * self.accumulation))

    def evaluate(self, split: str = "val") -> dict:
        """The split's loss (and rating error); off a terminal, a line says when it starts and how long it took
        (an evaluation of a real model on a CPU is minutes of silence otherwise)."""
        name = {"val": "validation", "test": "test", "train": "training"}.get(split, split)
        steps = f"step {self.state.global_step}/{self.total_steps}: " if getattr(self, "total_steps", None) else ""
        plain = self.progress is not None and self.progress.bar is None and self.progress.enabled
        if plain:
            self.progress.write(f"{steps}evaluating the {name} split ({len(self.data.batches(split, 0, shuffle=False))}"
                                " batches)")
            self.progress.phase(f"evaluating the {name} split")
        start = time.time()
        try:
            result = self._evaluate(split)
        finally:
            if self.progress is not None:
                self.progress.phase("training")
        result["seconds"] = round(time.time() - start, 1)
        if plain:
            self.progress.write(f"{steps}evaluated the {name} split in {_took(result['seconds'])}")
        return result

    @torch.no_grad()
    def _evaluate(self, split: str) -> dict:
        batches = self.data.batches(split, 0, shuffle=False)
        self.loss_model.eval()
        total = torch.zeros(4, dtype=torch.float64, device=self.acc.device)  # losses, tokens, squared errors, ratings
        world, rank = self.acc.num_processes, self.acc.process_index
        for i in range(math.ceil(len(batches) / world)):
            # every rank runs the same number of forwards (FSDP gathers weights in each); extras weigh 0
            k = i * world + rank
            b, weight = (batches[k], 1.0) if k < len(batches) else (batches[0], 0.0)
            losses, errors = _split(self.loss_model(**batch_tensors(b, self.acc.device, self.boundaries)))
            total[0] += losses.double().sum() * weight
            total[1] += len(losses) * weight
            if errors is not None:
                total[2] += errors.double().sum() * weight
                total[3] += len(errors) * weight
        total = self.acc.reduce(total, reduction="sum")
        self.loss_model.train()
        loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
        result = {"loss": loss, "target_tokens": int(total[1].item()), "batches": len(batches)}
        if self.data.scale is not None:  # the squared error of the expected rating, for the log (not for selection)
            result["rating_mse"] = (total[2] / total[3]).item() if total[3] > 0 else float("nan")
        if self.cfg.select_by == "rating_rmse" and split == "val":
            result["rating_rmse"] = self._val_rating_rmse()
        return result

    def _val_rating_rmse(self) -> float:
        """The validation split scored as predict scores it, on the weights being trained (`val_scorer`:
        eval/valrating.py, given by the train command: training never imports the twin it trains)."""
        self.loss_model.eval()
        try:
            model = self.acc.unwrap_model(self.loss_model).model
            return self.val_scorer(self.cfg, model, self.tokenizer, self.prep, self.cfg.val_rating_targets)
        finally:
            self.loss_model.train()

    def log(self, row: dict) -> None:
        st = self.state
        # the epoch of the last step: an evaluation at the end of epoch 1 is epoch 1's, not the next one's
        epoch = st.epoch if st.global_step and not st.step_in_epoch else st.epoch + 1
        row = {"step": st.global_step, "epoch": epoch, **row, "time": round(time.time(), 3)}
        self.state.log.append(row)
        self.loggers.write(row, self.state.global_step)

    # -- the run

    def run(self) -> dict:
        result = self._run()
        if self.acc.num_processes > 1:  # leave together; torch wants the group destroyed before exit
            self.acc.wait_for_everyone()
            self.acc.end_training()
        return result

    def _run(self) -> dict:
        start = time.time()
        if self.main:
            write_run_start(self.cfg, self.run_dir, self.prep, self.renderer)
        first, total_steps = self._set_up_training()
        self.progress = Progress(total_steps, 0, enabled=self.show_progress) if self.main else None
        try:
            self._begin()
            if self.progress is not None:  # a resumed run counts from its checkpoint's step; speed from now
                self.progress.done = self.progress.first = self.state.global_step
                self.progress.restart_clock()
            self._loop(first, total_steps)
            final = self._finish_best()  # (its evaluation, if any, is announced like the others)
        finally:
            if self.progress is not None:
                self.progress.close()
            self.progress = None
        st = self.state
        result = _summary(self.cfg, self.acc, self.prep, st, time.time() - start, self.initial_val, final)
        by_rmse = self.cfg.select_by == "rating_rmse"
        chosen = "lowest validation expected-rating RMSE" if by_rmse else "lowest validation loss"
        found = (st.best_val_rating_rmse if by_rmse else st.best_val_loss) is not None
        result["best"] = chosen if self.selects and found else "last"
        result.update(learning_rate=self.learning_rate, batch_tokens=self.data.budget, accumulation=self.accumulation)
        if self.main:
            write_json(self.run_dir.summary, result)
            write_text(self.run_dir.best / "README.md", best_card(self.cfg, result))
            self.loggers.close()
        self._say_result(final)
        return result

    def _say_result(self, final: float | None) -> None:
        where = f"best model in {self.run_dir.best}; run in {self.run_dir.path}"
        if final is None:
            self.say(f"no validation loss to select by: best/ holds the weights of the last step "
                     f"({self.state.global_step}); {where}")
            return
        before = "not measured" if self.initial_val is None else f"{self.initial_val:.4f}"
        self.say(f"validation loss after training: {final:.4f} (before: {before}); {where}")

    def _finish_best(self) -> float | None:
        """Make best/ hold the best evaluated weights (the last ones when nothing can be evaluated) and put them in
        the model; returns their validation loss (None without validation)."""
        st = self.state
        if self.selects and st.last_eval_step != st.global_step:
            # the last steps were never evaluated: they may be the best (no early stopping: the run ends anyway)
            ev, improved = self._validate()
            self._report_validation(ev, improved)
            self.checkpoints.save(st)
        if st.best_step is None:
            if self.selects:  # validation exists but no loss was finite (the run diverged)
                self.say("warning: no evaluation gave a finite validation loss: best/ holds the last weights")
            self.checkpoints.save_best(self.loss_model, self.tokenizer)
            st.best_step = st.global_step
            return None
        if st.best_step == st.global_step:
            return st.best_val_loss  # the weights in hand are best/ and were just evaluated
        self.checkpoints.restore_best(self.loss_model)
        return self.evaluate()["loss"]

    def _set_up_training(self) -> tuple[list, int]:
        """Model, optimizer and schedule, prepared by accelerate; the first epoch's batches and the step count."""
        cfg, acc = self.cfg, self.acc
        self.attention = training_attention(cfg)
        self.boundaries = self.attention == "varlen"
        self.loss_model = _loss_model(cfg, self.attention, self.show_progress, self.debug, self.data.scale)
        params = [p for p in self.loss_model.parameters() if p.requires_grad]
        encoded = self.data.encoded("train", 0, shuffle=True)
        self._use_plan(self._plan(encoded))
        first = self.data.group(encoded)
        steps_per_epoch = self._steps_per_epoch(len(first))
        total_steps = self._planned_steps(steps_per_epoch)
        self.total_steps = total_steps
        self.learning_rate, why = learning_rate(cfg, self.data.budget * self.accumulation * acc.num_processes)
        if why:
            self.say(why)
        optimizer, scheduler = _optimizer(cfg, params, total_steps, self.learning_rate)
        # the scheduler stays outside accelerate.prepare: its wrapper would step it once per process
        self.loss_model, optimizer = acc.prepare(self.loss_model, optimizer)
        acc.register_for_checkpointing(scheduler)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.loggers = Loggers(cfg, self.run_dir, self.main, self.say)
        trainable = sum(getattr(p, "ds_numel", p.numel()) for p in params)  # ZeRO-3: partitioned
        cut = " (--max_steps)" if cfg.max_steps and total_steps == cfg.max_steps else ""
        self.say(f"model {cfg.model}: {trainable:,} trainable parameters ({'LoRA r=' + str(cfg.lora_r) if cfg.lora else 'full'}),"
                 f" {acc.num_processes} process(es), {steps_per_epoch} steps per epoch, {total_steps} steps in all{cut}")
        return first, total_steps

    def _plan(self, encoded: list) -> BatchPlan:
        """The micro-batch size and accumulation: a resumed run keeps its checkpoint's (its batches must be the
        same), otherwise fixed or probed (--batch_tokens auto)."""
        if self.resume_from is not None:
            saved = self.checkpoints.peek(self.resume_from)
            if saved.batch_tokens is not None:
                return BatchPlan(saved.batch_tokens, saved.accumulation, "")
        tokens = sum(len(e) for e in encoded)
        share = sum(e.n_target_tokens for e in encoded) / tokens if tokens else 1.0
        return plan_batches(self.cfg, self.acc, self.loss_model, share, self.boundaries, epoch_tokens=tokens)

    def _use_plan(self, plan: BatchPlan) -> None:
        self.data.budget, self.accumulation = plan.batch_tokens, plan.accumulation
        self.acc.gradient_accumulation_steps = plan.accumulation
        self.state.batch_tokens, self.state.accumulation = plan.batch_tokens, plan.accumulation
        if plan.note:
            self.say(plan.note)

    def _planned_steps(self, first_epoch_steps: int) -> int:
        """The global steps the loop will run: max_epochs epochs, cut at max_steps. Re-sampled epochs pack into
        different numbers of micro-batches, so each is counted (deterministic: it is built the same way later)."""
        cfg = self.cfg
        total = first_epoch_steps
        for epoch in range(1, cfg.max_epochs):
            if cfg.max_steps and total >= cfg.max_steps:
                break
            total += self._steps_per_epoch(len(self.data.batches("train", epoch, shuffle=True))) \
                if self.data.varies else first_epoch_steps
        return min(total, cfg.max_steps) if cfg.max_steps else total

    def _begin(self) -> None:
        """Resume from the checkpoint, or measure the validation loss before training (when asked)."""
        if not self.selects:
            early = ", and no early stopping" if self.cfg.early_stopping_patience else ""
            self.say("the validation split has no targets: no evaluation, no model selection" + early +
                     "; best/ will hold the weights of the last step")
        if self.resume_from is not None:
            self.state = self.checkpoints.load(self.resume_from)
            self.initial_val = next((r["val_loss"] for r in self.state.log if r.get("event") == "eval_start"), None)
        elif not (self.cfg.eval_at_start and self.selects):
            self.initial_val = None
        else:
            ev = self.evaluate()
            self.initial_val = ev["loss"]
            rmse = f", expected-rating RMSE {ev['rating_rmse']:.4f}" if "rating_rmse" in ev else ""
            self.say(f"validation loss before training: {ev['loss']:.4f} ({ev['target_tokens']:,} target tokens)"
                     + rmse)
            self.log({"event": "eval_start", "val_loss": ev["loss"],
                      **({"val_rating_rmse": ev["rating_rmse"]} if "rating_rmse" in ev else {})})

    def _loop(self, first_batches: list, total_steps: int) -> None:
        """The training loop: every decision of the run (when to step, log, validate, save, stop) is made here."""
        cfg, acc, st = self.cfg, self.acc, self.state
        per_step = acc.num_processes * self.accumulation  # micro-batches of one global step, all ranks together
        self.loss_model.train()
        with _CtrlC(acc, self.say) as ctrl_c:
            for epoch in range(st.epoch, cfg.max_epochs):
                if st.global_step >= total_steps or st.stopped_early:  # also a resumed run that had finished
                    break
                batches = first_batches if epoch == 0 else self.data.batches("train", epoch, shuffle=True)
                self._record_epoch(epoch, batches)
                n_steps = self._steps_per_epoch(len(batches))
                interval = _Interval(acc.device, st.tokens_seen)
                # --resume: the epoch's order is seeded, so skipping the steps done finds the same batches
                for step in range(st.step_in_epoch, n_steps):
                    group = batches[step * per_step:(step + 1) * per_step]
                    self._forward_backward(group, interval)
                    # accumulate() syncs on the group's last micro-batch, and accelerate's optimizer steps only
                    # then: the clipping and the scheduler (kept out of accelerate.prepare) follow it
                    if acc.sync_gradients and cfg.max_grad_norm:
                        acc.clip_grad_norm_(self.loss_model.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    if acc.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad()

                    st.global_step += 1
                    if self.progress is not None:
                        self.progress.step()
                    st.epoch, st.step_in_epoch = epoch, step + 1
                    st.targets_seen += sum(b.n_targets for b in group)
                    st.tokens_seen += sum(b.n_tokens for b in group)
                    end_of_epoch = step == n_steps - 1
                    # the run's last step closes an interval too (a --max_steps run would lose its tail otherwise)
                    if st.global_step % cfg.logging_steps == 0 or end_of_epoch or st.global_step >= total_steps:
                        self._log_interval(interval)
                    if end_of_epoch:  # before any checkpoint: a resumed run starts the next epoch
                        st.epoch, st.step_in_epoch = epoch + 1, 0

                    due = (cfg.eval_steps and st.global_step % cfg.eval_steps == 0) or \
                        (end_of_epoch and not cfg.eval_steps)
                    if due and self.selects:
                        ev, improved = self._validate()
                        if cfg.early_stopping_patience and st.bad_evals >= cfg.early_stopping_patience:
                            st.stopped_early = True
                        self._report_validation(ev, improved)
                    if due or (cfg.save_steps and st.global_step % cfg.save_steps == 0):
                        self.checkpoints.save(st)
                    if ctrl_c.asked_anywhere():
                        self.checkpoints.save(st)
                        self.say(f"interrupted: checkpoint saved at step {st.global_step} in "
                                 f"{self.run_dir.checkpoints}; continue with --resume")
                        raise KeyboardInterrupt
                    if st.stopped_early or st.global_step >= total_steps:
                        break
                if st.step_in_epoch:  # left the epoch early (max_steps, early stopping)
                    break

    def _record_epoch(self, epoch: int, batches: list) -> None:
        """The epoch's size for summary.json, once (a resumed run re-enters its epoch)."""
        if not any(e["epoch"] == epoch + 1 for e in self.state.epochs):
            self.state.epochs.append({"epoch": epoch + 1, "targets": sum(b.n_targets for b in batches),
                                      "target_tokens": sum(b.n_target_tokens for b in batches),
                                      "tokens": sum(b.n_tokens for b in batches), "micro_batches": len(batches)})

    def _forward_backward(self, group: list, interval: _Interval) -> None:
        """Gradients of one global step's micro-batches (this rank's share, accumulated); their losses (and, with
        --rating_loss_weight, squared rating errors) go into the interval's sums on the device."""
        cfg, acc = self.cfg, self.acc
        world, accum = acc.num_processes, self.accumulation
        global_target_tokens = sum(b.n_target_tokens for b in group)
        global_ratings = sum(len(b.ratings) for b in group) if self.data.scale is not None else 0
        mine = rank_batches(group, acc.process_index, world)
        for m in range(accum):
            # ranks without a batch left in the last step run a zero-weight one (keeps DDP in step)
            b, weight = (mine[m], 1.0) if m < len(mine) else (group[0], 0.0)
            with acc.accumulate(self.loss_model):
                losses, errors = _split(self.loss_model(**batch_tensors(b, acc.device, self.boundaries)))
                # normalised by the target tokens of the whole global step; accelerate divides by
                # accum and DDP averages over ranks, so scale back by both
                loss = losses.sum() * weight * world * accum / max(global_target_tokens, 1)
                if errors is not None:  # the mean over the global step's ratings, normalised the same way
                    loss = loss + cfg.rating_loss_weight * errors.sum() * weight * world * accum / max(global_ratings, 1)
                acc.backward(loss)
            interval.sums[0] += losses.detach().double().sum() * weight
            if errors is not None:
                interval.ratings[0] += errors.detach().double().sum() * weight
                interval.ratings[1] += len(errors) * weight
        interval.sums[1] += global_target_tokens / world
        interval.target_tokens += global_target_tokens

    def _log_interval(self, interval: _Interval) -> None:
        st = self.state
        total = self.acc.reduce(interval.sums, reduction="sum").tolist()  # waits for the device
        dt = max(time.time() - interval.tick, 1e-9)
        loss, target_speed = total[0] / max(total[1], 1), round(interval.target_tokens / dt, 1)
        self.log({"loss": loss, "lr": self.scheduler.get_last_lr()[0],
                  "tokens_per_second": round((st.tokens_seen - interval.tokens_at_tick) / dt, 1),
                  "target_tokens_per_second": target_speed,
                  "interval_tokens": st.tokens_seen - interval.tokens_at_tick,
                  "interval_target_tokens": interval.target_tokens, **self._rating_row(interval)})
        if self.progress is not None:
            self.progress.logged(loss, target_speed)
        interval.restart(st.tokens_seen)

    def _rating_row(self, interval: _Interval) -> dict:
        """With --rating_loss_weight: the interval's mean squared error of the expected rating (the loss term
        before its weight); else nothing, so that the log rows stay as they were."""
        if self.data.scale is None:
            return {}
        errors, n = self.acc.reduce(interval.ratings, reduction="sum").tolist()
        return {"rating_loss": errors / n if n else float("nan"), "interval_ratings": int(n)}

    def _validate(self) -> tuple[dict, bool]:
        """Validate; keep the weights in best/ when they improved by --select_by's metric, else count one more
        evaluation without improvement. Returns the evaluation and whether it improved."""
        st = self.state
        ev = self.evaluate()
        score, best = self._score(ev)
        # a nan (a diverged run) is never the best
        improved = math.isfinite(score) and (best is None or score < best - self.cfg.early_stopping_threshold)
        if improved:
            st.best_val_loss, st.best_step, st.bad_evals = ev["loss"], st.global_step, 0
            st.best_val_rating_rmse = ev.get("rating_rmse")
            self.checkpoints.save_best(self.loss_model, self.tokenizer)
        else:
            st.bad_evals += 1
        st.last_eval_step = st.global_step
        return ev, improved

    def _report_validation(self, ev: dict, improved: bool) -> None:
        st = self.state
        self.log({"event": "eval", "val_loss": ev["loss"], "best_val_loss": st.best_val_loss,
                  **({"val_rating_mse": ev["rating_mse"]} if "rating_mse" in ev else {}),
                  **({"val_rating_rmse": ev["rating_rmse"], "best_val_rating_rmse": st.best_val_rating_rmse}
                     if "rating_rmse" in ev else {})})
        self.say(self._eval_line(ev, improved))

    def _score(self, ev: dict) -> tuple[float, float | None]:
        """(this evaluation's selection metric, the best one so far): --select_by's."""
        if self.cfg.select_by == "rating_rmse":
            return ev["rating_rmse"], self.state.best_val_rating_rmse
        return ev["loss"], self.state.best_val_loss

    def _eval_line(self, ev: dict, improved: bool) -> str:
        cfg, st = self.cfg, self.state
        rmse = f", expected-rating RMSE {ev['rating_rmse']:.4f}" if "rating_rmse" in ev else ""
        head = f"step {st.global_step}/{self.total_steps}: validation loss {ev['loss']:.4f}{rmse}"
        if improved:
            return f"{head} (best so far: saved to best/)"
        best_value = st.best_val_rating_rmse if cfg.select_by == "rating_rmse" else st.best_val_loss
        best = "no best yet" if st.best_step is None else f"best {best_value:.4f} at step {st.best_step}"
        patience = f"; {st.bad_evals}/{cfg.early_stopping_patience} without improvement" \
            if cfg.early_stopping_patience else ""
        return f"{head} ({best}{patience}){': stopping early' if st.stopped_early else ''}"


def _took(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _split(out) -> tuple:
    """(per-token losses, squared rating errors or None) from TargetLoss's output."""
    return out if isinstance(out, tuple) else (out, None)


def _summary(cfg: Config, acc, prep: Prepared, st: TrainState, wall: float, before, after: float) -> dict:
    """summary.json: what the run did, how fast, and the validation loss before and after training."""
    result = {
        "steps": st.global_step, "epochs": st.epoch + (1 if st.step_in_epoch else 0),
        "targets_per_epoch": prep.stats["train"].targets, "tokens_per_epoch": prep.stats["train"].tokens,
        "targets_seen": st.targets_seen, "tokens_seen": st.tokens_seen,
        "per_epoch": st.epochs,
        "tokens_per_second": round(st.tokens_seen / max(wall, 1e-9), 1),
        "val_loss_before": before, "val_loss_after": after,
        "best_val_loss": st.best_val_loss, "best_step": st.best_step,
        **({"best_val_rating_rmse": st.best_val_rating_rmse} if cfg.select_by == "rating_rmse" else {}),
        "stopped_early": st.stopped_early, "wall_seconds": round(wall, 1), "unit": cfg.unit,
        "processes": acc.num_processes,
    }
    if torch.cuda.is_available():  # every process's peak (one GPU each)
        peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=acc.device)
        result["peak_memory_gib"] = [round(x, 2) for x in acc.gather(peak).tolist()]
    return result


WANDB_MISSING = "--wandb_project needs the wandb package: pip install wandb"


def check_packages(cfg: Config) -> None:
    """The optional packages the settings ask for are installed (found, not imported: importing wandb is slow)."""
    import importlib.util

    if cfg.wandb_project and importlib.util.find_spec("wandb") is None:
        raise UsertwinError(WANDB_MISSING)


def train(cfg: Config, overwrite: bool = False, resume: bool = False, progress: bool = True,
          tokenizer=None, debug: bool = False, val_scorer=None) -> dict:
    """`usertwin train`: lock the run directory, prepare the data, train; the lock is held until the end.
    progress: bars (or plain progress lines off a terminal); debug: let third-party warnings through (quiet.py);
    val_scorer: the validation RMSE of --select_by rating_rmse (eval/valrating.val_rating_rmse)."""
    from accelerate.utils import set_seed

    check_packages(cfg)  # before the run directory, the model and the data: a missing package shows at once
    acc = make_accelerator(cfg)
    main = acc.is_main_process
    run, lock = open_run(cfg, overwrite, resume) if main else (RunDir(cfg.output_dir or "."), None)
    try:
        acc.wait_for_everyone()
        resume_from = run.latest_checkpoint() if resume else None
        if resume and resume_from is None and main:
            print(f"--resume: no checkpoint in {run.checkpoints}; starting from the beginning", flush=True)
        set_seed(cfg.seed)
        tokenizer = tokenizer or load_tokenizer(cfg.model, cfg.trust_remote_code)
        prep = prepare(cfg, tokenizer=tokenizer, progress=progress and main)
        cfg = prep.config  # settled: what takes effect (a unit switched for a history strategy), saved as such
        for notice in prep.notices if main else ():
            print(notice, flush=True)
        renderer = Renderer(cfg, tokenizer)
        return Trainer(cfg, acc, run, prep, renderer, tokenizer, resume_from, progress=progress, debug=debug,
                       val_scorer=val_scorer).run()
    finally:  # also on errors and Ctrl-C: the next run may take the directory
        if lock is not None:
            lock.release()
