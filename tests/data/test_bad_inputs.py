"""The corpus of bad inputs (tests/bad_inputs/) run through the real CLI: exit code, the exact message, no traceback.

CASES is the table of record: each row is (case id, command, exit code, the exact text usertwin prints). `{d}`
stands for tests/bad_inputs, `{tmp}` for the test's temporary folder. Exit code 2 = stopped with one message on
stderr; 0 = the input is acceptable (or the bad part was skipped and counted, `--on-error skip`) and the text
is what stdout says. tests/bad_inputs/EXPECTED.md explains the decisions in prose.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, TESTS

from usertwin.cli import main
from usertwin.errors import UsertwinError

D = TESTS / "bad_inputs"
SKIP_HINT = "hint: use --on_error skip to skip bad records"
CONVERT_HINT = "use --on_error skip to skip such rows and count them"
F = "task.task_behavior_collections"


def one(path, record, field, message, of="1 of 1 record"):
    """The message of a records file with one bad record."""
    return "\n".join([f"usertwin validate: error: {{d}}/{path}: 1 problem in {of}:",
                      f"  {{d}}/{path}, record {record}, field {field}: {message}", SKIP_HINT])


CASES = [
    # --- invalid JSON: line, column, the line with a caret, the likely cause and what to do
    ("unescaped-quote-zh", "validate {d}/unescaped_quote_zh.json", 2, "\n".join([
        "usertwin validate: error: {d}/unescaped_quote_zh.json:5:63: invalid JSON at line 5, column 63: "
        "Expecting ',' delimiter",
        '           {"continuation_prefix": "《霸王别姬》：", "continuation": "他说"好看"就走了", "timestamp": '
        '"2005-06-01"},',
        " " * 75 + "^",
        'likely cause: an unescaped double quote (") inside a string; run: usertwin validate '
        "{d}/unescaped_quote_zh.json --repair OUT"])),
    ("trailing-comma", "validate {d}/trailing_comma.json", 2, "\n".join([
        "usertwin validate: error: {d}/trailing_comma.json:6:4: invalid JSON at line 6, column 4: Expecting value",
        "       ]}]}}",
        "       ^",
        "likely cause: a trailing comma before ']' or '}' (JSON allows none); delete it, or run: usertwin validate "
        "{d}/trailing_comma.json --repair OUT"])),
    ("truncated", "validate {d}/truncated.json", 2, "\n".join([
        "usertwin validate: error: {d}/truncated.json:5:30: invalid JSON at line 5, column 30: Unterminated string "
        "starting at",
        '         {"continuation": "3.5", "timest',
        "                                 ^",
        "likely cause: the file ends too early (truncated, or cut off while copying); check that it is complete"])),
    ("jsonl-broken-line", "validate {d}/broken_line.jsonl", 2, "\n".join([
        "usertwin validate: error: {d}/broken_line.jsonl:2:131: invalid JSON on line 2, column 131: "
        "Expecting ',' delimiter",
        '    ...", "data": [{"continuation": "a"}, {"continuation": "b"}]}]}',
        " " * 67 + "^",
        "likely cause: the line ends too early (the record is cut off, or split over several lines)",
        "each line of a JSON Lines file must be one complete record; use --on_error skip to skip bad records"])),
    ("jsonl-broken-line-skip", "validate {d}/broken_line.jsonl --on-error skip", 0, "\n".join([
        "OK: 2 records, 2 users, 4 items",
        "skipped 1 bad record:",
        "  {d}/broken_line.jsonl:2:131, record 1: invalid JSON: Expecting ',' delimiter (likely cause: the line "
        "ends too early (the record is cut off, or split over several lines))"])),
    ("jsonl-broken-line-convert-skip", "convert records {d}/broken_line.jsonl -o {tmp}/o.jsonl --on-error skip", 0,
     "records: 2 users, 4 items, no timestamps -> {tmp}/o.jsonl; skipped 1: 1 invalid record"),
    ("top-level-number", "validate {d}/top_level_number.json", 2,
     "usertwin validate: error: {d}/top_level_number.json: the top level is a number; expected a JSON list of "
     "records, one record object, or JSON Lines (one record per line)"),
    # --- encoding
    ("not-utf8-gbk", "validate {d}/not_utf8.json", 2,
     "usertwin validate: error: {d}/not_utf8.json:1:102: not valid UTF-8 (byte 0xba at line 1, column 102); it "
     "looks like GBK/GB18030 (Chinese); convert it: iconv -f GB18030 -t UTF-8 {d}/not_utf8.json > OUT"),
    ("bom", "validate {d}/bom.json", 0, "\n".join([
        "OK: 1 records, 1 users, 2 items",
        "warning: {d}/bom.json: starts with a UTF-8 byte order mark (BOM); ignored it"])),
    # --- schema: one message naming file, record index, user and field
    ("no-user", "validate {d}/no_user.json", 2, one(
        "no_user.json", "1", "user", "missing; a record needs a user id (user_hash, user.id, user.hash or "
        "user.profile.name)", of="1 of 2 records")),
    ("no-collections", "validate {d}/no_collections.json", 2, one(
        "no_collections.json", "0 (user 'u1')", F, "missing")),
    ("no-continuation", "validate {d}/no_continuation.json", 2, one(
        "no_continuation.json", "0 (user 'u1')", f"{F}[0].data[1].continuation", "missing")
     + "\nhint: a scenario's test file (test_leaderboard.json: items without a continuation, the targets) is "
       "checked with --targets"),
    ("no-continuation-targets", "validate {d}/no_continuation.json --targets", 0,
     "OK: 1 records, 1 users, 2 items, 1 of them targets (no continuation)"),
    ("continuation-not-string", "validate {d}/continuation_number.json", 2, one(
        "continuation_number.json", "0 (user 'u7')", f"{F}[0].data[0].continuation",
        'must be a string, got a number (4.5) (write it in quotes: "4.5")')),
    ("empty-collection", "validate {d}/empty_collection.json", 2, one(
        "empty_collection.json", "0 (user 'u1')", f"{F}[1].data",
        "empty collection: a collection needs at least one item")),
    ("bad-timestamp", "validate {d}/bad_timestamp.json", 2, one(
        "bad_timestamp.json", "0 (user 'u3')", f"{F}[0].data[1].timestamp",
        "cannot read \"2005-13-45\": not a valid date or time: '2005-13-45' (month must be in 1..12)")),
    ("future-timestamp", "validate {d}/future_timestamp.json", 2, one(
        "future_timestamp.json", "0 (user 'u3')", f"{F}[0].data[1].timestamp",
        '"2999-01-01T00:00:00Z" is in the future (after today, {today}); check the year, and that unix times are '
        "seconds or milliseconds (not microseconds)")),
    ("rating-off-scale", "validate {d}/rating_out_of_scale.json", 2, one(
        "rating_out_of_scale.json", "0 (user 'u1')", f"{F}[0].data[1].continuation",
        '"7.0" is not on the rating scale (task.rating_scale: 0.5 .. 5)')),
    ("rating-off-scale-skip", "validate {d}/rating_out_of_scale.json --on-error skip", 0, "\n".join([
        "OK: 1 records, 1 users, 1 items",  # the bad item is left out, not its user
        "warning: 1 user(s) have a single item ('u1'): kept, with no history; in the time split it is a train "
        "target",
        "skipped 1 bad item of 1 kept user:",
        "  {d}/rating_out_of_scale.json:2, record 0 (user 'u1'), item 1, field " + F + "[0].data[1].continuation: "
        "\"7.0\" is not on the rating scale (task.rating_scale: 0.5 .. 5)"])),
    # --- acceptable, with a warning
    ("one-item-user", "validate {d}/one_item_user.json", 0, "\n".join([
        "OK: 2 records, 2 users, 8 items",
        "warning: 1 user(s) have a single item ('solo'): kept, with no history; in the time split it is a train "
        "target"])),
    ("out-of-order", "validate {d}/out_of_order.json", 0, "\n".join([
        "OK: 1 records, 1 users, 7 items",
        "warning: 1 user(s) had items out of time order in the file ('u1'); sorted by timestamp (ties keep file "
        "order)"])),
    ("duplicate-user-ids-merged", "validate {d}/duplicate_users.json", 0, "\n".join([
        "OK: 3 records, 2 users, 9 items",
        "warning: user 'u1': records 0 and 2 share this user id; merged their items into one timeline (profile "
        "from record 0)",
        "warning: 1 user(s) had items out of time order in the file ('u1'); sorted by timestamp (ties keep file "
        "order)"])),
    # --- empty, missing, directory
    ("empty-json", "validate {d}/empty.json", 2,
     "usertwin validate: error: {d}/empty.json: the file is empty; expected a JSON list of records, one record "
     "object, or JSON Lines (one record per line)"),
    ("empty-jsonl", "validate {d}/empty.jsonl", 2,
     "usertwin validate: error: {d}/empty.jsonl: the file is empty; expected JSON Lines (one record object per "
     "line)"),
    ("missing-file", "validate {d}/no_such_file.json", 2, "usertwin validate: error: {d}/no_such_file.json: no such file"),
    ("directory-as-records", "validate {d}/a_directory", 2,
     "usertwin validate: error: {d}/a_directory: is a directory; give a records file (.json or .jsonl)"),
    ("directory-as-output", "convert movielens {d}/movielens_rating_out_of_scale -o {d}/a_directory", 2,
     "usertwin convert: error: {d}/a_directory: is a directory; give the records file to write, e.g. "
     "{d}/a_directory/records.jsonl"),
    ("directory-as-config", "prepare --config {d}/a_directory", 2,
     "usertwin prepare: error: config {d}/a_directory is a directory, expected a YAML file"),
    ("directory-as-movielens", "convert movielens {d}/a_directory -o {tmp}/o.jsonl", 2,
     "usertwin convert: error: {d}/a_directory: not a MovieLens folder: expected ratings.csv + movies.csv "
     "(ml-latest, ml-latest-small), u.data + u.item + u.user (ml-100k) or ratings.dat + movies.dat + users.dat "
     "(ml-1m)"),
    # --- converters: a missing column / field in each
    ("movielens-missing-column", "convert movielens {d}/movielens_missing_column -o {tmp}/o.jsonl", 2,
     "usertwin convert: error: {d}/movielens_missing_column/ratings.csv: missing column(s) timestamp; found "
     "userId, movieId, rating (expected userId, movieId, rating, timestamp)"),
    ("movielens-rating-off-scale", "convert movielens {d}/movielens_rating_out_of_scale -o {tmp}/o.jsonl", 2,
     "usertwin convert: error: {d}/movielens_rating_out_of_scale/ratings.csv:3: rating outside the scale "
     f"(rating='7.0', allowed 0.5..5); {CONVERT_HINT}"),
    ("movielens-rating-off-scale-skip",
     "convert movielens {d}/movielens_rating_out_of_scale -o {tmp}/o.jsonl --on-error skip", 0,
     "movielens: 2 users, 2 items, 2000-07-30 .. 2000-07-30 -> {tmp}/o.jsonl; skipped 1: 1 rating outside the scale"),
    ("dmsc-missing-column", "convert dmsc {d}/dmsc_missing_column -o {tmp}/o.jsonl", 2,
     "usertwin convert: error: {d}/dmsc_missing_column/DMSC.csv: missing column(s) Comment; found ID, "
     "Movie_Name_EN, Movie_Name_CN, Crawl_Date, Number, Username, Date, Star, Like (expected ID, Movie_Name_EN, "
     "Movie_Name_CN, Crawl_Date, Number, Username, Date, Star, Comment, Like)"),
    ("douban-dmr-missing-field", "convert douban-dmr {d}/douban_dmr_missing_field -o {tmp}/o.jsonl", 2,
     "usertwin convert: error: {d}/douban_dmr_missing_field/reviews.json, entry 'review0' (user '1001'), "
     f"user_reviews.review1: review without date (field date); {CONVERT_HINT}"),
    ("douban-dmr-missing-field-skip",
     "convert douban-dmr {d}/douban_dmr_missing_field -o {tmp}/o.jsonl --on-error skip", 0,
     "douban-dmr: 1 users, 1 items, 2019-01-02 .. 2019-01-02 -> {tmp}/o.jsonl; skipped 1: 1 review without date"),
    ("cornell-missing-field", "convert cornell {d}/cornell_missing_field -o {tmp}/o.jsonl", 2,
     "usertwin convert: error: {d}/cornell_missing_field/movie_lines.txt:2: expected 5 fields separated by "
     f"'+++$+++', got 4; {CONVERT_HINT}"),
    ("seed-samples-missing-field", "convert seed-samples {d}/seed_samples_missing_field -o {tmp}/o.jsonl", 2,
     "usertwin convert: error: {d}/seed_samples_missing_field/samples.json, sample 1 (user '7'): next_question "
     f"is missing or empty (field next_question); {CONVERT_HINT}"),
    ("seed-samples-missing-field-skip",
     "convert seed-samples {d}/seed_samples_missing_field -o {tmp}/o.jsonl --on-error skip", 0,
     "seed-samples: 1 users, 1 items, no timestamps -> {tmp}/o.jsonl; skipped 1: 1 next_question is missing or "
     "empty"),
    # --- configs
    ("config-unknown-key", "prepare --config {d}/config_unknown_key.yaml", 2,
     "usertwin prepare: error: {d}/config_unknown_key.yaml:2: unknown key 'histroy_strategy'; did you mean "
     "'history_strategy'?"),
    ("config-wrong-type", "prepare --config {d}/config_wrong_type.yaml", 2,
     "usertwin prepare: error: {d}/config_wrong_type.yaml:2: key 'learning_rate' must be float or null, got str 'fast'"),
    # --- settings out of range: before, max_length 0 prepared nothing and val_ratio 1.5 left 0 train targets
    ("flag-max-length-zero", "prepare --max_length 0", 2,
     "usertwin prepare: error: command line: key 'max_length' must be at least 1, got 0"),
    ("flag-val-ratio-above-one", "prepare --val_ratio 1.5", 2,
     "usertwin prepare: error: command line: key 'val_ratio' must be between 0 and 1, got 1.5"),
    ("flag-dashed-seed-name", "train --max-seq-length -5", 2,
     "usertwin train: error: command line: key 'max_length' must be at least 1, got -5"),
    ("flag-split-ratios-over-one", "inspect --val_ratio 0.6 --test_ratio 0.5", 2,
     "usertwin inspect: error: command line: val_ratio + test_ratio must be at most 1 (train_ratio is unset: "
     "training gets what they leave), got 0.6 + 0.5 = 1.1"),
    ("flag-top-p-zero", "predict --top_p 0 -o {tmp}/o.jsonl", 2,
     "usertwin predict: error: command line: key 'top_p' must be greater than 0 and at most 1, got 0.0"),
]


def run(capsys, command: str, tmp_path: Path, **extra):
    """(exit code, stdout, stderr) of `usertwin COMMAND` run in-process."""
    argv = [part.format(d=D, tmp=tmp_path, **extra) for part in command.split()]
    rc = main(argv + ["--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def today() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


@pytest.mark.parametrize("case,command,code,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, command, code, expected, tmp_path, capsys):
    rc, out, err = run(capsys, command, tmp_path)
    text = expected.replace("{d}", str(D)).replace("{tmp}", str(tmp_path)).replace("{today}", today())
    assert "Traceback" not in out + err
    assert rc == code, err
    if code == 0:
        assert err == "" and out.rstrip("\n") == text
    else:
        assert out == "" and err.rstrip("\n") == text
        assert not (tmp_path / "o.jsonl").exists()  # a failed convert leaves nothing behind


@pytest.mark.parametrize("text,message", [
    ("max_length: 0\n", "2: key 'max_length' must be at least 1, got 0"),
    ("val_ratio: 1.5\n", "2: key 'val_ratio' must be between 0 and 1, got 1.5"),
    ("train_ratio: 0.8\n", "2, command line: train_ratio + val_ratio + test_ratio must add up to 1, got 0.8 + 0.15 "
                           "+ 0.15 = 1.1"),
])
def test_config_file_out_of_range(tmp_path, capsys, text, message):
    """A range rule names the file and line; the split ratios, checked together, name every place they came from."""
    path = tmp_path / "cfg.yaml"
    path.write_text("unit: sample\n" + text)
    rc, out, err = run(capsys, "prepare --config {tmp}/cfg.yaml --test_ratio 0.15", tmp_path)
    assert (rc, out, err) == (2, "", f"usertwin prepare: error: {path}:{message}\n")


def test_corpus_has_at_least_20_kinds_and_every_file_is_used():
    kinds = {c[0].removesuffix("-skip").removesuffix("-convert") for c in CASES}
    assert len(kinds) >= 20
    used = " ".join(c[1] for c in CASES)
    for path in D.iterdir():
        if path.name != "EXPECTED.md":
            assert f"{{d}}/{path.name}" in used or path.name in USED_ELSEWHERE, path.name


USED_ELSEWHERE = {"out_of_order.json", "duplicate_users.json", "one_item_user.json"}  # also run through prepare below


def test_repair_fixes_the_unescaped_quote_and_the_trailing_comma(tmp_path, capsys):
    for name in ("unescaped_quote_zh.json", "trailing_comma.json"):
        out_file = tmp_path / f"fixed-{name}"
        rc, out, err = run(capsys, f"validate {{d}}/{name} --repair {out_file}", tmp_path)
        assert rc == 0 and err == "" and out.startswith("OK: 1 records, 1 users, 2 items\nrepaired ")
        assert main(["validate", str(out_file)]) == 0
        capsys.readouterr()
    assert "他说\\\"好看\\\"就走了" in (tmp_path / "fixed-unescaped_quote_zh.json").read_text(encoding="utf-8")


def test_json_nested_too_deeply(tmp_path, capsys):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    rc, out, err = run(capsys, "validate {tmp}/deep.json", tmp_path)
    assert rc == 2 and "Traceback" not in err
    assert err.rstrip("\n") == (f"usertwin validate: error: {tmp_path}/deep.json: JSON nested too deeply (lists or "
                                "objects inside each other hundreds of levels deep); a record is only a few levels "
                                "deep: is this a records file?")


def test_five_megabyte_single_item(tmp_path, capsys, tokenizer_dir):
    """A 5 MB continuation is valid data; prepare counts it as a target too long for max_length (left out)."""
    big = "好看" * (5 * 1024 * 1024 // 6)
    items = [{"continuation": "short", "timestamp": 1}, {"continuation": big, "timestamp": 2},
             {"continuation": "also short", "timestamp": 3}]
    raw = {"user_hash": "u1", "task": {"task_behavior_collections": [{"type": "movie_review", "data": items}]}}
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(raw, ensure_ascii=False) + "\n", encoding="utf-8")
    assert path.stat().st_size > 5_000_000
    rc, out, err = run(capsys, "validate {tmp}/big.jsonl", tmp_path)
    assert (rc, out, err) == (0, "OK: 1 records, 1 users, 3 items\n", "")
    rc, out, err = run(capsys, "prepare --data {tmp}/big.jsonl --model {tok} --max_length 256 --cache_dir {tmp}/c",
                       tmp_path, tok=tokenizer_dir)
    assert rc == 0 and err == "" and "Traceback" not in out
    header = re.search(r"^split .*$", out, re.M).group(0).split()
    train = re.search(r"^ *train .*$", out, re.M).group(0).split()
    row = dict(zip(header, train))
    assert header[-2:] == ["too", "long"] and train[-1] == "1"  # the 5 MB target, counted
    assert row["targets"] == "2"


def test_prepare_sorts_out_of_order_items_stably_and_merges_duplicate_users(tmp_path, capsys, tokenizer_dir):
    rc, out, err = run(capsys, "inspect --data {d}/out_of_order.json --model {tok} -n 0 --dump {tmp}/dump.jsonl "
                       "--cache_dir {tmp}/c", tmp_path, tok=tokenizer_dir)
    assert rc == 0 and err == ""
    assert ("1 user(s) had items out of time order in the file ('u1'); sorted by timestamp (ties keep file order)"
            in out)
    rows = sorted((json.loads(line) for line in (tmp_path / "dump.jsonl").open()), key=lambda r: r["target_index"])
    assert [r["target_text"] for r in rows] == ["first", "second-a", "second-b", "third", "fourth", "fifth", "sixth"]

    rc, out, err = run(capsys, "prepare --data {d}/duplicate_users.json --model {tok} --cache_dir {tmp}/c2",
                       tmp_path, tok=tokenizer_dir)
    assert rc == 0 and err == "" and out.startswith("2 users, 9 items;")
    assert ("user 'u1': records 0 and 2 share this user id; merged their items into one timeline (profile from "
            "record 0)") in out

    rc, out, err = run(capsys, "prepare --data {d}/one_item_user.json --model {tok} --cache_dir {tmp}/c3",
                       tmp_path, tok=tokenizer_dir)
    assert rc == 0 and err == "" and out.startswith("2 users, 8 items;")
    assert "1 user(s) have a single item ('solo')" in out


def test_prepare_skips_and_counts_a_bad_record(tmp_path, capsys, tokenizer_dir):
    rc, out, err = run(capsys, "prepare --data {d}/no_user.json --model {tok} --on_error skip --cache_dir {tmp}/c",
                       tmp_path, tok=tokenizer_dir)
    assert rc == 0 and err == "" and out.startswith("1 users, 1 items;")
    assert "1 record(s) skipped (--on_error skip)" in out


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(UsertwinError, match="field user: missing"):
        main(["validate", str(D / "no_user.json"), "--debug"])


def test_subprocess_exit_code_and_stderr_without_and_with_debug():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "usertwin.cli", "validate", str(D / "truncated.json")]
    plain = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr.startswith(f"usertwin validate: error: {D}/truncated.json:5:30: invalid JSON")
    assert "Traceback" not in plain.stderr
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env, timeout=60)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr and "UsertwinError" in debug.stderr


def test_os_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    rc, out, err = run(capsys, "validate {tmp}/" + "a" * 300, tmp_path)
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("usertwin validate: error: ") and "File name too long" in err


def test_out_of_memory_says_what_to_lower(tmp_path, capsys, monkeypatch):
    import usertwin.cli.validate as validate

    def oom(args):
        raise MemoryError()

    monkeypatch.setattr(validate, "run", oom)
    rc, out, err = run(capsys, "validate {d}/bom.json", tmp_path)
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("usertwin validate: error: out of memory (MemoryError). Lower --batch_tokens")
    assert "--gradient_checkpointing" in err and "--resume" in err
