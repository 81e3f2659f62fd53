"""The second rating dataset of issue 24: N seeded users of MovieLens 1M, every rating of each, in ml-1m's layout.

    python benchmarks/ml1m_subset.py ML1M_DIR OUT_DIR [--users 400] [--seed 42] [--below 2999]

ML1M_DIR holds ratings.dat, movies.dat and users.dat (GroupLens's ml-1m; research use, no redistribution:
keep the output out of this repository). `--below`: only users with a smaller id are drawn -- the copy this
project could bring (../shared/data/movielens/ml-1m-partial, see its SOURCE.md) is the first 487,650 lines of
ratings.dat, so its last user (2999) may be cut. The users are drawn with random.Random(seed).shuffle of the
sorted ids; their lines keep the file's order. Convert the output with `usertwin convert movielens OUT_DIR`.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="folder with ml-1m's ratings.dat, movies.dat, users.dat")
    ap.add_argument("out", type=Path, help="folder to write the subset to (ml-1m layout)")
    ap.add_argument("--users", type=int, default=400, help="how many users to draw (default %(default)s)")
    ap.add_argument("--seed", type=int, default=42, help="seed of the draw (default %(default)s)")
    ap.add_argument("--below", type=int, default=2999, help="draw only user ids below this (default %(default)s)")
    args = ap.parse_args(argv)
    lines = (args.src / "ratings.dat").read_bytes().splitlines(keepends=True)
    ids = sorted({int(line.split(b"::", 1)[0]) for line in lines if line.strip()})
    ids = [u for u in ids if u < args.below]
    random.Random(args.seed).shuffle(ids)
    keep = set(ids[:args.users])
    kept = [line for line in lines if line.strip() and int(line.split(b"::", 1)[0]) in keep]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ratings.dat").write_bytes(b"".join(kept))
    for name in ("movies.dat", "users.dat"):
        shutil.copyfile(args.src / name, args.out / name)
    md5 = hashlib.md5(b"".join(kept)).hexdigest()
    print(f"{len(keep)} users, {len(kept)} ratings -> {args.out}/ratings.dat (md5 {md5})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
