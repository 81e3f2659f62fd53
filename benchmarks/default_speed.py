"""The default `usertwin train` command on a GPU, before and after `--batch_tokens auto` (issue 15, part 1).

Side by side in one run, on the same prepared data (a shared cache, prepared first so neither run pays for it):

* `previous`: the previous default, one max_length row per micro-batch and per optimizer step
  (`--batch_tokens MAX_LENGTH`, accumulation 1);
* `auto`: today's default (`--batch_tokens auto`: a probe step sizes the micro-batch to the GPU, up to
  step_tokens per optimizer step).

Both train SmolLM2-135M-Instruct with LoRA on the first `--pair_users` users of ml-latest-small (timeline unit,
max_length 2048, 2 epochs, everything else default). Then `auto` alone runs the issue's whole command (the first
`--users` users), whose previous-default time was measured in issue 15 (950 s on an H200).
Printed last: wall-time and tokens/s ratios and the validation losses. Results: OUT/default_speed.{json,md}.

    python benchmarks/default_speed.py --records .gpu/ml.jsonl --model .gpu/smollm2.gguf --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality_movielens import run_logged  # noqa: E402


def first_users(records: Path, n: int, out: Path) -> Path:
    lines = [ln for ln in records.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    return out


def usertwin(argv: list[str], log: Path) -> float:
    cmd = [sys.executable, "-m", "usertwin.cli", *argv]
    rc, wall = run_logged(cmd, log, {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                              os.environ.get("PYTHONPATH")]))})
    print(f"{log.name}: exit {rc} in {wall:.1f} s", flush=True)
    if rc != 0:
        print(log.read_text(encoding="utf-8", errors="replace")[-3000:], flush=True)
        raise SystemExit(f"{log.name} failed")
    return wall


def train(label: str, records: Path, args, extra: list[str]) -> dict:
    run = args.out / "runs" / label
    common = ["--data", str(records), "--model", args.model, "--max_length", str(args.max_length),
              "--max_epochs", "2", "--cache_dir", str(args.out / "cache"), "--no-progress"]
    wall = usertwin(["train", *common, "--output_dir", str(run), "--overwrite", *extra], args.out / f"{label}.log")
    summary = json.loads((run / "summary.json").read_text())
    plan = [ln for ln in (args.out / f"{label}.log").read_text().splitlines() if "batch_tokens auto" in ln]
    return {"label": label, "flags": extra, "wall_s": round(wall, 1), "plan": plan[0] if plan else None,
            **{k: summary.get(k) for k in ("steps", "epochs", "tokens_seen", "tokens_per_second", "val_loss_before",
                                          "val_loss_after", "best_val_loss", "best_step", "stopped_early",
                                          "wall_seconds", "peak_memory_gib")}}


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("--records", required=True, help="ml-latest-small converted to the unified format (JSONL)")
    ap.add_argument("--model", default="smollm2", help="the base model (a GGUF path on the GPU machine)")
    ap.add_argument("--out", type=Path, required=True, help="results and runs go here")
    ap.add_argument("--users", type=int, default=300, help="users of the issue's command (auto only)")
    ap.add_argument("--pair_users", type=int, default=60, help="users of the side-by-side pair")
    ap.add_argument("--max_length", type=int, default=2048, help="tokens per window")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    pair = first_users(Path(args.records), args.pair_users, args.out / f"ml-{args.pair_users}.jsonl")
    whole = first_users(Path(args.records), args.users, args.out / f"ml-{args.users}.jsonl")
    for records in (pair, whole):  # prepared once, in the shared cache: no run pays for tokenizing
        usertwin(["prepare", "--data", str(records), "--model", args.model, "--max_length", str(args.max_length),
                  "--cache_dir", str(args.out / "cache"), "--no-progress"], args.out / f"prepare-{records.stem}.log")
    runs = [train("previous", pair, args, ["--batch_tokens", str(args.max_length)]),
            train("auto", pair, args, [])]
    runs.append(train(f"auto-{args.users}", whole, args, []))
    old, new = runs[0], runs[1]
    ratios = {"wall": round(old["wall_s"] / new["wall_s"], 2),
              "training_wall": round(old["wall_seconds"] / new["wall_seconds"], 2),
              "tokens_per_second": round(new["tokens_per_second"] / old["tokens_per_second"], 2),
              "best_val_loss_change_pct": round(100 * (new["best_val_loss"] / old["best_val_loss"] - 1), 2)}
    result = {"machine": machine, "torch": torch.__version__, "command": shlex.join(sys.argv), "runs": runs,
              "ratios_auto_vs_previous": ratios}
    (args.out / "default_speed.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Default train command, previous default vs batch_tokens auto ({machine})", "",
             "| run | users | wall s | training s | steps | tokens/s | val loss before -> best | peak GiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r, n in zip(runs, (args.pair_users, args.pair_users, args.users)):
        lines.append(f"| {r['label']} | {n} | {r['wall_s']} | {r['wall_seconds']} | {r['steps']} | "
                     f"{r['tokens_per_second']:,.0f} | {r['val_loss_before']:.4f} -> {r['best_val_loss']:.4f} | "
                     f"{r['peak_memory_gib']} |")
    lines += ["", f"auto vs previous ({args.pair_users} users): {ratios}", "",
              *(f"plan ({r['label']}): {r['plan']}" for r in runs if r["plan"])]
    (args.out / "default_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
