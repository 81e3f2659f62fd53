"""The files of a run directory, named in one place.

    RUN/config.yaml                  the resolved config of `usertwin train` (what every later command reads)
    RUN/config.json                  the resolved config of `usertwin prepare --output_dir RUN`
    RUN/data_summary.json            counts per split (prepare / train)
    RUN/training_samples_preview.txt the first training sequences, loss spans marked
    RUN/logs.jsonl, RUN/tensorboard/ training curves
    RUN/checkpoints/step-N/          resumable state (trainer_state.json inside)
    RUN/best/                        the best weights (adapter or full model) and the tokenizer: those of the
                                     lowest validation loss, or the last ones when validation has no targets
    RUN/summary.json                 the end of training: steps, losses, speed, which weights best/ holds
    RUN/twin.json                    what a twin needs from its training data (rating scale, task, language)
    RUN/predictions-SPLIT.jsonl      `usertwin predict`
    RUN/metrics.json                 `usertwin evaluate`
    RUN/baselines.json               `usertwin baselines`
    RUN/cache/                       the prepare cache of this run
    RUN/.lock                        held by the process writing the run
"""

from __future__ import annotations

from pathlib import Path

from usertwin.errors import UsertwinError

CHECKPOINT_STATE = "trainer_state.json"
LOCK_NAME = ".lock"
CACHE_NAME = "cache"
METRICS_NAME = "metrics.json"


class RunDir:
    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # what `train` writes
    config = property(lambda self: self.path / "config.yaml")
    prepared_config = property(lambda self: self.path / "config.json")
    data_summary = property(lambda self: self.path / "data_summary.json")
    preview = property(lambda self: self.path / "training_samples_preview.txt")
    logs = property(lambda self: self.path / "logs.jsonl")
    tensorboard = property(lambda self: self.path / "tensorboard")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best = property(lambda self: self.path / "best")
    summary = property(lambda self: self.path / "summary.json")
    twin_facts = property(lambda self: self.path / "twin.json")
    crowd = property(lambda self: self.path / "crowd.json")  # other users' ratings (crowd context), train + val
    cache = property(lambda self: self.path / CACHE_NAME)
    lock = property(lambda self: self.path / LOCK_NAME)
    # what the evaluation commands write
    metrics = property(lambda self: self.path / METRICS_NAME)
    baselines = property(lambda self: self.path / "baselines.json")

    def predictions(self, split: str = "test") -> Path:
        return self.path / f"predictions-{split}.jsonl"

    def baseline_rows(self, split: str = "test") -> Path:
        """The folder of each baseline's per-target rows (NAME.jsonl): the report's paired intervals read them."""
        return self.path / f"baselines-{split}"

    @staticmethod
    def metrics_beside(predictions: Path) -> Path:
        """`evaluate FILE.jsonl` writes its metrics next to the file it read."""
        return Path(predictions).with_name(METRICS_NAME)

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step}"

    def checkpoint_list(self) -> list[Path]:
        """Complete checkpoints (their state file written), oldest first."""
        found = [p for p in self.checkpoints.glob("step-*") if (p / CHECKPOINT_STATE).is_file()]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def checkpoint_dirs(self) -> list[Path]:
        """Every checkpoint folder, complete or not, oldest first (what pruning counts)."""
        return sorted(self.checkpoints.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))

    @staticmethod
    def temporary(final: Path) -> Path:
        """Where a folder (a checkpoint, best/) is written before it is renamed into place."""
        return final.with_name(f".tmp-{final.name}")

    def latest_checkpoint(self) -> Path | None:
        ckpts = self.checkpoint_list()
        return ckpts[-1] if ckpts else None

    def is_run(self) -> bool:
        return self.config.is_file()

    def load_config(self):
        """The run's resolved config (config.yaml)."""
        from usertwin.config import from_mapping, load_yaml

        if not self.is_run():
            raise UsertwinError(f"{self.path} is not a run directory (no config.yaml): "
                                "pass the --output_dir of a train run")
        mapping = load_yaml(self.config)
        if isinstance(mapping, dict):
            # a run trained before crowd context existed rendered its prompts without it (today's default: item)
            mapping.setdefault("crowd_context", "none")
        return from_mapping(mapping, str(self.config))

    def tokenizer_source(self, model: str) -> str:
        """best/ holds the tokenizer the run trained with; before best/ exists, the base model's."""
        return str(self.best) if (self.best / "tokenizer_config.json").is_file() else model


class ScenarioDir:
    """The files of a leaderboard scenario (the research scripts' layout) and of what `usertwin predict
    --scenario` writes for it.

        DIR/train.json                 the users' records: profiles and history
        DIR/test_leaderboard.json      records whose items have no continuation: the targets
        OUT/test_leaderboard.json      the same, each target item with its generated `continuations`
        OUT/summary.json               counts, settings, wall time
        OUT/generations.jsonl          one row per target, appended per batch (what a killed run resumes from)
    """

    def __init__(self, path):
        self.path = Path(path)

    train = property(lambda self: self.path / "train.json")
    test = property(lambda self: self.path / "test_leaderboard.json")
    summary = property(lambda self: self.path / "summary.json")
    generations = property(lambda self: self.path / "generations.jsonl")
