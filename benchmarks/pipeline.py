"""Data pipeline speed and memory on this machine: MovieLens convert + prepare, and DMSC conversion at scale.

1. ml-latest-small: `usertwin convert movielens`, then `prepare` (renders and tokenizes every item, SmolLM2
   tokenizer) with --unit timeline and with --unit sample. Wall time per stage, total (goal <= 30 s),
   peak RSS of each stage (VmHWM reset before it; the process's whole state, tokenizer included), items/s.
2. A synthetic DMSC-layout CSV (default 2,000,000 rows; ~50k users with Zipf-like activity 1/(rank+100), ~30 movies,
   Chinese comments of 5-60 characters, some with commas and quotes) written under /tmp, streamed through
   `usertwin convert dmsc` in a fresh child process (spawned, so it inherits nothing) for N/10 and N rows:
   wall time, items/s, the child's own peak RSS and the peak disk used by its temporary SQLite folder.
   Goal: flat memory, peak(N) / peak(N/10) <= 1.25.

Prints a table and the goals last; writes benchmarks/results/pipeline.{json,md}. The generated CSVs are
removed afterwards.

    python benchmarks/pipeline.py [MOVIELENS_DIR] [--rows 2000000]
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DEFAULT_ML = ROOT.parent / "shared" / "data" / "movielens" / "ml-latest-small"
HEADER = ["ID", "Movie_Name_EN", "Movie_Name_CN", "Crawl_Date", "Number", "Username", "Date", "Star", "Comment",
          "Like"]
VOCAB = list("的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家可下而过天"
             "去能对小多然于心学么之都好看起发当没成只如事把还用第样道想作种开美总从无情己面最女但现前些所同日"
             "手又行意动电影剧情演员导演画面故事结局感人精彩无聊喜欢失望特效配乐节奏经典")
MOVIES = [(f"Movie {i}", f"电影{i}号") for i in range(30)]
FLAT_LIMIT = 1.25
TOTAL_GOAL_S = 30.0
ML_NOTE = ("MovieLens peak RSS is per stage: the benchmark process's peak (VmHWM, reset before each stage, "
           "so it includes what the process already holds: libraries, tokenizer)")
ML_NOTE_MAX = "MovieLens peak RSS is the benchmark process's running maximum after each stage"
PEAK_RESET = False
SQLITE_NOTE = ("The DMSC converter's SQLite page cache is capped at 64 MiB (cache_size=-65536 in convert/dmsc.py) and "
               "fills only once the temporary database outgrows it: while the N/10 database is smaller than that, "
               "the ratio counts the cache filling up to its cap, not growth with N.")


def rss_mib() -> float:
    """Peak RSS of this process, MiB: VmHWM (per address space, so a spawned child does not inherit its
    parent's peak as ru_maxrss does), else ru_maxrss (KiB on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs), so the next peak is a stage's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    global PEAK_RESET
    PEAK_RESET = True
    return True


# ---------------------------------------------------------------------------------------------- MovieLens
def movielens(raw: Path, tmp: Path) -> list[dict]:
    from usertwin.config import Config
    from usertwin.data.convert import convert_to_file
    from usertwin.sequences.prepare import prepare
    from usertwin.text.tokens import load_tokenizer

    rows = []
    records = tmp / "ml-latest-small.jsonl"
    reset_peak()
    t = time.perf_counter()
    summary = convert_to_file("movielens", raw, records, on_error="stop", progress=False)
    rows.append({"stage": "movielens convert", "items": summary.items, "seconds": time.perf_counter() - t,
                 "peak_rss_mib": rss_mib()})
    reset_peak()
    t = time.perf_counter()
    tok = load_tokenizer("smollm2")
    rows.append({"stage": "load tokenizer (smollm2)", "items": None, "seconds": time.perf_counter() - t,
                 "peak_rss_mib": rss_mib()})
    for unit in ("timeline", "sample"):
        prep = None  # the previous stage's result is freed before this one is measured
        gc.collect()
        reset_peak()
        t = time.perf_counter()
        cfg = Config(data=str(records), cache_dir=tempfile.mkdtemp(dir=tmp), unit=unit)
        prep = prepare(cfg, tokenizer=tok, use_cache=False, progress=False)
        secs = time.perf_counter() - t
        seqs = sum(len(v) for v in prep.sequences.values())
        tokens = sum(s.tokens for s in prep.stats.values())
        rows.append({"stage": f"prepare --unit {unit}", "items": summary.items, "seconds": secs,
                     "peak_rss_mib": rss_mib(), "sequences": seqs, "tokens": tokens})
    return rows


# ---------------------------------------------------------------------------------------------- DMSC
def _comment(rnd: random.Random) -> str:
    chars = rnd.choices(VOCAB, k=rnd.randint(5, 60))
    r = rnd.random()
    if r < 0.15:  # commas: the field must be quoted
        chars.insert(rnd.randrange(len(chars)), ",")
    elif r < 0.22:  # quotes: doubled inside a quoted field
        chars.insert(rnd.randrange(len(chars)), '"好"')
    elif r < 0.24:  # full-width punctuation and an inner newline now and then
        chars.insert(rnd.randrange(len(chars)), "，\n" if rnd.random() < 0.5 else "！")
    return "".join(chars)


def write_dmsc(small: Path, big: Path, n: int, users: int = 50_000, seed: int = 0) -> None:
    """DMSC-layout CSV of n rows at `big`; its first n // 10 rows also at `small`. Sorted by movie like the real file."""
    rnd = random.Random(seed)
    weights, acc = [], 0.0
    for rank in range(1, users + 1):  # Zipf-Mandelbrot activity 1/(rank+100): at 2M rows the busiest user
        acc += 1.0 / (rank + 100)     # writes ~3,200 comments, the quietest ~6 (mean 40)
        weights.append(acc)
    names = [str(10_000 + i) if i % 3 == 0 else f"影迷_{i}" for i in range(users)]
    rnd.shuffle(names)
    per_movie = [n // len(MOVIES) + (1 if i < n % len(MOVIES) else 0) for i in range(len(MOVIES))]
    day0, span = date(2010, 1, 1).toordinal(), date(2017, 12, 31).toordinal() - date(2010, 1, 1).toordinal()
    with open(small, "w", newline="", encoding="utf-8") as fs, open(big, "w", newline="", encoding="utf-8") as fb:
        ws, wb = csv.writer(fs), csv.writer(fb)
        ws.writerow(HEADER)
        wb.writerow(HEADER)
        row_id = 0
        for (en, cn), count in zip(MOVIES, per_movie):
            picks = rnd.choices(range(users), cum_weights=weights, k=count)
            for number, u in enumerate(picks, 1):
                row = [row_id, en, cn, "2018-01-22", number, names[u],
                       date.fromordinal(day0 + rnd.randrange(span + 1)).isoformat(), rnd.randint(1, 5),
                       _comment(rnd), rnd.randrange(200) if rnd.random() < 0.3 else 0]
                wb.writerow(row)
                if row_id < n // 10:
                    ws.writerow(row)
                row_id += 1
    # the small file holds the first n // 10 rows in file order (the first movies), which is what a user of
    # the real file would get by cutting it; its user count is smaller too, which favours it slightly


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _convert_child(csv_path: str, out: str, tmpdir: str, queue) -> None:
    """Runs in a spawned process: convert, and report seconds, counts, own peak RSS and peak temp disk."""
    tempfile.tempdir = tmpdir  # the converter's temporary SQLite goes here, so its size can be watched
    from usertwin.data.convert import convert_to_file

    peak_disk, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            peak_disk[0] = max(peak_disk[0], _dir_bytes(Path(tmpdir)))
            stop.wait(0.25)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    t = time.perf_counter()
    summary = convert_to_file("dmsc", csv_path, out, on_error="stop", progress=False)
    secs = time.perf_counter() - t
    stop.set()
    th.join()
    queue.put({"seconds": secs, "users": summary.users, "items": summary.items,
               "peak_rss_mib": rss_mib(), "peak_tmp_mib": peak_disk[0] / 2**20})


def convert_dmsc(csv_path: Path, tmp: Path, label: str, rows: int) -> dict:
    key = str(rows)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    sqlite_tmp = tmp / f"sqlite-{key}"
    sqlite_tmp.mkdir()
    out = tmp / f"dmsc-{key}.jsonl"
    p = ctx.Process(target=_convert_child, args=(str(csv_path), str(out), str(sqlite_tmp), q))
    p.start()
    res = q.get()
    p.join()
    if p.exitcode:
        raise SystemExit(f"conversion of {csv_path} failed (exit code {p.exitcode})")
    res.update(stage=f"dmsc convert ({label})", rows=rows, csv_mib=csv_path.stat().st_size / 2**20,
               records_mib=out.stat().st_size / 2**20)
    out.unlink()
    return res


# ---------------------------------------------------------------------------------------------- report
def versions() -> dict:
    out = {}
    for mod in ("torch", "transformers", "tokenizers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing library is reported, not fatal
            out[mod] = None
    return out


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def table(rows: list[dict]) -> list[str]:
    lines = ["| stage | rows / items | seconds | items/s | peak RSS MiB |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        n = r.get("items")
        count = f"{r['rows']:,} / {n:,}" if "rows" in r else fmt(n, ",")
        rate = fmt(n / r["seconds"] if n and r["seconds"] else None, ",.0f")
        lines.append(f"| {r['stage']} | {count} | {r['seconds']:.2f} | {rate} | {r['peak_rss_mib']:.0f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("movielens", nargs="?", default=str(DEFAULT_ML), help="ml-latest-small folder")
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the synthetic DMSC CSV")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where pipeline.json/.md go")
    args = ap.parse_args(argv)
    command = " ".join(["python benchmarks/pipeline.py", *(argv if argv is not None else sys.argv[1:])])

    tmp = Path(tempfile.mkdtemp(prefix="usertwin-bench-", dir="/tmp"))
    try:
        ml_rows = movielens(Path(args.movielens), tmp)
        t = time.perf_counter()
        small, big = tmp / "dmsc-small.csv", tmp / "dmsc.csv"
        write_dmsc(small, big, args.rows)
        gen_s = time.perf_counter() - t
        print(f"generated {args.rows:,} rows ({big.stat().st_size / 2**20:.0f} MiB) in {gen_s:.0f} s", flush=True)
        d_small = convert_dmsc(small, tmp, f"N/10 = {args.rows // 10:,} rows", args.rows // 10)
        print(f"N/10: {d_small['seconds']:.1f} s, {d_small['peak_rss_mib']:.0f} MiB", flush=True)
        d_big = convert_dmsc(big, tmp, f"N = {args.rows:,} rows", args.rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ml_total = sum(r["seconds"] for r in ml_rows)
    ratio = d_big["peak_rss_mib"] / d_small["peak_rss_mib"]
    goals = [
        {"goal": f"ml-latest-small convert + prepare x2 (incl. tokenizer load) <= {TOTAL_GOAL_S:.0f} s",
         "value": round(ml_total, 2), "pass": ml_total <= TOTAL_GOAL_S},
        {"goal": f"DMSC conversion memory flat: peak RSS(N) / peak RSS(N/10) <= {FLAT_LIMIT}",
         "value": round(ratio, 3), "pass": ratio <= FLAT_LIMIT},
    ]
    rows = ml_rows + [{"stage": "movielens total", "items": None, "seconds": ml_total,
                       "peak_rss_mib": max(r["peak_rss_mib"] for r in ml_rows)}, d_small, d_big]
    result = {
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    **versions()},
        "rows": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
        "dmsc_generate_seconds": round(gen_s, 1),
        "goals": goals,
        "notes": [ML_NOTE if PEAK_RESET else ML_NOTE_MAX,
                  "DMSC peak RSS is the converting child's own (spawned process, ru_maxrss)",
                  "peak_tmp_mib: largest size of the temporary SQLite folder during the conversion",
                  SQLITE_NOTE],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    m = result["machine"]
    md = ["# Data pipeline benchmark", "",
          f"`{command}` on {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, "
          f"transformers {m['transformers']}, {result['date'][:10]}.", "", *table(rows), "",
          f"DMSC temporary SQLite, peak on disk: {d_small['peak_tmp_mib']:.0f} MiB (N/10), "
          f"{d_big['peak_tmp_mib']:.0f} MiB (N); CSV {d_big['csv_mib']:.0f} MiB, records "
          f"{d_big['records_mib']:.0f} MiB; {d_big['users']:,} users. Generating the CSV took {gen_s:.0f} s.", "",
          *[f"- {'PASS' if g['pass'] else 'MISS'}: {g['goal']} (measured {g['value']})" for g in goals], "",
          f"{ML_NOTE if PEAK_RESET else ML_NOTE_MAX}; DMSC peak RSS is the converting child process's own. "
          f"{SQLITE_NOTE}"]
    (out / "pipeline.md").write_text("\n".join(md) + "\n", encoding="utf-8")

    print()
    print("\n".join(table(rows)))
    print(f"DMSC temp SQLite peak: {d_small['peak_tmp_mib']:.0f} MiB (N/10), {d_big['peak_tmp_mib']:.0f} MiB (N)")
    for g in goals:
        print(f"{'PASS' if g['pass'] else 'MISS'}  {g['goal']}: {g['value']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
