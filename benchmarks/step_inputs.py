"""The host's share of a training step (issue 27): turning one packed micro-batch into tensors, today's
`batch_tensors` (numpy reads the rows, torch finds the target positions) against the previous version (Python
loops over every token, torch.tensor over nested lists), side by side in one run on the same micro-batches:

    python benchmarks/step_inputs.py --records .gpu/ml-small.jsonl --tokenizer .gpu/tok-smollm2 --out DIR

The micro-batches are the first --batches packed rows of --batch_tokens tokens of `usertwin train`'s timeline
unit on the records. Each round times every micro-batch with both versions in turn; the tensors must be equal.
On a GPU the copy to the device is included (pinned and asynchronous today; pageable before, which waits for
the device's queue). Results: OUT/step_inputs.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_throughput as gt  # noqa: E402
import simulate_speed as ss  # noqa: E402


def loops_tensors(batch, device, boundaries: bool = False) -> dict:
    """The previous batch_tensors (before 2026-12-08), kept as the baseline."""
    from usertwin.model.attention import boundaries_of
    from usertwin.text.tokens import IGNORE

    index, targets = [], []
    for r, row in enumerate(batch.labels):
        width = len(row) - 1
        for j in range(width):
            if row[j + 1] != IGNORE:
                index.append(r * width + j)
                targets.append(row[j + 1])
    t = {"input_ids": torch.tensor(batch.input_ids), "labels": torch.tensor(batch.labels),
         "position_ids": torch.tensor(batch.position_ids), "target_index": torch.tensor(index, dtype=torch.long),
         "target_labels": torch.tensor(targets, dtype=torch.long)}
    if batch.attention_mask is not None:
        t["attention_mask"] = torch.tensor(batch.attention_mask)
    if boundaries and batch.seq_lens is not None:
        cu, longest = boundaries_of(batch.seq_lens)
        t["cu_seq_lens"] = torch.tensor(cu, dtype=torch.int32)
        t["max_length"] = longest
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}


def micro_batches(args) -> list:
    from usertwin.sequences.prepare import prepare
    from usertwin.text.render import Renderer
    from usertwin.text.tokens import load_tokenizer
    from usertwin.train.trainer import EpochData

    tokenizer = load_tokenizer(str(args.tokenizer))
    cfg = gt.base_config(args.records, args.tokenizer, args.work / "run", args, unit="timeline")
    prep = prepare(cfg, tokenizer=tokenizer, progress=False)
    data = EpochData(cfg, prep, Renderer(cfg, tokenizer), tokenizer)
    encoded = data.encoded("train", 0, shuffle=True)
    return data.group(encoded)[:args.batches]


def timed(fn, batch, device) -> float:
    gt.sync()
    t = time.perf_counter()
    fn(batch, device, True)
    gt.sync()
    return 1000 * (time.perf_counter() - t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=Path, required=True, help="records (JSONL), e.g. ml-latest-small's")
    ap.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer folder (SmolLM2's)")
    ap.add_argument("--out", type=Path, required=True, help="folder for step_inputs.json/.md")
    ap.add_argument("--work", type=Path, default=Path("/tmp/usertwin-step-inputs"), help="scratch folder")
    ap.add_argument("--batch_tokens", type=int, default=65536, help="tokens per packed micro-batch")
    ap.add_argument("--max_length", type=int, default=2048, help="tokens per sequence")
    ap.add_argument("--batches", type=int, default=8, help="micro-batches timed")
    ap.add_argument("--rounds", type=int, default=5, help="times each micro-batch is timed with each version")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from usertwin.train.trainable import batch_tensors

    env = ss.environment("step_inputs.py", argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = micro_batches(args)
    for b in batches:  # same tensors, or the comparison means nothing
        new, old = batch_tensors(b, device, True), loops_tensors(b, device, True)
        assert new.keys() == old.keys() and all(
            torch.equal(new[k], old[k]) if torch.is_tensor(new[k]) else new[k] == old[k] for k in new)
    times = {"loops": [], "numpy": []}
    for _ in range(args.rounds):
        for b in batches:
            times["loops"].append(timed(loops_tensors, b, device))
            times["numpy"].append(timed(batch_tensors, b, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"env": env, "device": device, "micro_batches": len(batches),
              "tokens": [b.n_tokens for b in batches], "median_ms": {k: round(v, 2) for k, v in med.items()},
              "speedup": round(med["loops"] / med["numpy"], 2), "identical": True}
    text = (f"# A micro-batch's tensors on the host ({env['device']})\n\n`{env['command']}` on {env['date']}; "
            f"torch {env['torch']}. {len(batches)} packed micro-batches of the timeline unit "
            f"(median {statistics.median(result['tokens']):,.0f} tokens), each timed {args.rounds} times with "
            "both versions in turn; the tensors are equal.\n\n| version | median ms a micro-batch |\n| --- | --- |\n"
            f"| Python loops, torch.tensor (before) | {med['loops']:.1f} |\n| numpy, torch.nonzero (now) | "
            f"{med['numpy']:.1f} |\n\nSpeed-up: **{result['speedup']}x**.\n")
    (args.out / "step_inputs.json").write_text(json.dumps(result, indent=1))
    (args.out / "step_inputs.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
