"""usertwin report: a self-contained HTML (and Markdown) comparison of run directories built by hand here;
rendered in headless Chromium when it is installed (.ci/run installs it)."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from usertwin.errors import UsertwinError
from usertwin.eval import metrics as M
from usertwin.eval import report as R
from usertwin.eval.report import page, plots, tables
from usertwin.rundir import RunDir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DANGEROUS = "<script>alert(1)</script>"
CHINESE = "这部电影的配乐真是太好听了"
CHROMIUM = "/usr/bin/chromium"


# ---------------------------------------------------------------- fake run directories


def _jsonl(path: Path, rows, torn_tail: str = "") -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + torn_tail, encoding="utf-8")


def _config(path: Path, **kw) -> None:
    lines = [f"{k}: {v}" for k, v in {"model": "tiny", "ablation": "profile_and_history_and_context",
                                       "unit": "timeline", "history_strategy": "all_previous", **kw}.items()]
    RunDir(path).config.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _logs(steps: int, start: float, resumed_at: int | None = None) -> list:
    rows = [{"step": 0, "epoch": 1, "event": "eval_start", "val_loss": start + 0.2}]
    for s in range(1, steps + 1):
        rows.append({"step": s, "epoch": 1 + s // 5, "loss": start + 1 / s, "lr": 1e-4})
        if s % 5 == 0:
            rows.append({"step": s, "epoch": 1 + s // 5, "event": "eval", "val_loss": start + 0.5 / s,
                         "best_val_loss": start + 0.5 / s})
    if resumed_at:  # a killed run logs steps again after resuming from its checkpoint
        rows += [{"step": s, "epoch": 1, "loss": start + 1 / s, "lr": 1e-4} for s in range(resumed_at, steps + 1)]
    return rows


def rating_rows() -> list:
    rows = []
    for u in range(7):
        n_items = [8, 30, 120, 260, 15, 60, 3][u]
        for k in range(4):
            ref = [4.0, 3.5, 5.0, 2.0][(u + k) % 4]
            probs = [0.02, 0.03, 0.05, 0.1, 0.1, 0.2, 0.2, 0.15, 0.1, 0.05]
            rows.append({"user": f"u{u}", "target_index": n_items - 4 + k, "split": "test",
                         "collection": "movie_rating", "item": f"Toy Story {u}-{k} (1995) (Animation): ",
                         "language": "en", "reference": f"{ref}", "predictions": [f"{ref - 0.5 * (k % 2)}"],
                         "loss": 0.4 + 0.1 * k + 0.01 * u, "n_tokens": 3 + k, "history_len": [0, 3, 12, 40, 70][k + u % 2],
                         "user_items": n_items,
                         "rating": {"scale": [x / 2 for x in range(1, 11)], "probs": probs, "most_likely": 3.0,
                                    "expected": 3.0 + 0.1 * k}})
    return rows


def text_rows() -> list:
    rows = []
    for u in range(4):
        for k in range(3):
            ref = DANGEROUS if (u, k) == (1, 0) else f"{CHINESE}，第{k}次 & <b>很好</b>"
            rows.append({"user": f"用户{u}", "target_index": 10 + k, "split": "test", "collection": "movie_review",
                         "item": "霸王别姬 (剧情, 爱情): ", "language": "zh", "reference": ref,
                         "predictions": ["配乐很好听，演员也不错", "一般"], "loss": 2.0 + 0.2 * k,
                         "n_tokens": 12, "history_len": 2 + 10 * k, "user_items": 25 + 100 * u,
                         "pick": {"k": 3, "chosen": k % 2, "correct": k % 2 == 0, "scores": [-1.0, -2.0, -3.0, -4.0]}})
    return rows


def make_runs(root: Path) -> list[Path]:
    a, b = root / "runs" / "rating-timeline", root / "runs" / "review-none"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    _config(a)
    _config(b, ablation="none", unit="sample", history_strategy="fixed_count")
    for run, start in ((a, 0.5), (b, 2.0)):
        RunDir(run).summary.write_text(json.dumps({
            "steps": 20, "epochs": 4, "targets_per_epoch": 100, "tokens_per_epoch": 5000,
            "per_epoch": [{"epoch": 1, "targets": 100}], "tokens_per_second": 1234.5,
            "val_loss_before": start + 0.2, "val_loss_after": start + 0.025, "best_val_loss": start + 0.025,
            "wall_seconds": 61.2, "unit": "timeline"}), encoding="utf-8")
    _jsonl(RunDir(a).logs, _logs(20, 0.5, resumed_at=16), torn_tail='{"step": 21, "lo')
    _jsonl(RunDir(b).logs, _logs(20, 2.0))
    _jsonl(RunDir(a).predictions("test"), rating_rows())
    _jsonl(RunDir(b).predictions("test"), text_rows())
    # run a: the metrics file exactly as usertwin.eval.metrics writes it; run b: another shape (the schema may move)
    RunDir(a).metrics.write_text(json.dumps(M.evaluate_rows(rating_rows())), encoding="utf-8")
    RunDir(b).metrics.write_text(json.dumps({
        "text": {"bleu": 12.5, "chrf": 30.25, "rouge_l": 28.0, "perplexity": 7.4},
        "pick": {"accuracy": 0.5, "chance": 0.25},
        "by_activity": {"21-50": {"text": {"bleu": 3.0}}}}, ensure_ascii=False), encoding="utf-8")
    return [a, b]


BASELINES = {
    "user_item_bias": M.rating_metrics([4.0, 3.5, 5.0], [3.8, 3.6, 4.4]),
    "copy_last_item": {"n": 12, "language": "zh", "bleu": 4.5, "chrf": 10.0, "rouge_l": 9.0},
}


# ---------------------------------------------------------------- reading the output


class Page(HTMLParser):
    """What the tests look at: metrics-table body rows, <img> sources, script tags, text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows, self.imgs, self.scripts, self.text = [], [], 0, []
        self.in_metrics = self.in_body = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.in_metrics = attrs.get("id") == "metrics"
        elif tag == "tbody" and self.in_metrics:
            self.in_body = True
        elif tag == "tr" and self.in_metrics and self.in_body:
            self.rows.append(attrs.get("class"))
        elif tag == "img":
            self.imgs.append(attrs.get("src") or "")
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_metrics = self.in_body = False

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def md_metrics_rows(md: str) -> list[str]:
    section = md.split("## Metrics\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return lines[2:]  # header and rule


def png_of_data_uri(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    return base64.b64decode(src[len(prefix):], validate=True)


# ---------------------------------------------------------------- tests


def test_report_two_runs(tmp_path):
    runs = make_runs(tmp_path)
    out = tmp_path / "out" / "report.html"
    result = R.build_report(runs, out)
    assert result["html"] == out and result["markdown"] == out.with_suffix(".md")
    assert result["rows"] == 2
    text = out.read_text(encoding="utf-8")
    page = parse(text)
    assert page.rows == ["run", "run"]
    # plots: loss curves, by history length, by activity; each a data: URI holding a PNG
    assert len(page.imgs) == 3
    for src in page.imgs:
        assert png_of_data_uri(src).startswith(PNG_SIGNATURE)
    # user text is escaped; the page has no script at all (and forbids one)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script" not in text.lower() and page.scripts == 0
    assert DANGEROUS in "".join(page.text)  # shown to the reader as text
    assert "&lt;b&gt;很好&lt;/b&gt;" in text and "<b>很好" not in text
    assert '<meta charset="utf-8">' in text and "script-src" not in text and "default-src 'none'" in text
    assert CHINESE in text and "用户1" in text and "霸王别姬" in text
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    # the metrics table: identity from config.yaml, training from summary.json, metrics.json flattened; the
    # run whose ablation shows no history is labelled so, not with the history_strategy it never used
    assert "profile_and_history_and_context" in text and "fixed_count" not in text
    table = R.metrics_table([R.load_run(p) for p in runs], None)
    assert [row["cells"]["history"] for row in table.rows] == ["all_previous", "no history"]
    assert 'title="rating.expected.rmse"' in text and 'title="text.bleu"' in text
    assert 'title="pick.accuracy"' in text and 'title="train.val_loss_after"' in text
    assert "by_activity" not in text
    # samples: at most max_examples users per run, inside <details>
    assert text.count("<details>") == 2 * 5 - 1  # the text run has 4 users
    # the torn last line of run a's logs is reported, not fatal
    assert result["runs"][0]["problems"] and "logs.jsonl: 1 unreadable line" in result["runs"][0]["problems"][0]
    # Markdown beside it: the same metrics rows, plots as PNG files beside it
    md = result["markdown"].read_text(encoding="utf-8")
    assert len(md_metrics_rows(md)) == 2
    assert [p.name for p in result["images"]] == ["report-loss.png", "report-history.png", "report-activity.png"]
    for p in result["images"]:
        assert p.read_bytes().startswith(PNG_SIGNATURE) and f"]({p.name})" in md
    assert "<script>" not in md and CHINESE in md
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        ["report.html", "report.md", "report-loss.png", "report-history.png", "report-activity.png"])


def test_report_is_deterministic(tmp_path):
    runs = make_runs(tmp_path)
    a = R.build_report(runs, tmp_path / "a.html")
    b = R.build_report(runs, tmp_path / "b.html")
    assert a["html"].read_text() == b["html"].read_text()


def test_baselines_in_the_same_table(tmp_path):
    runs = make_runs(tmp_path)
    result = R.build_report(runs, tmp_path / "r.html", baselines=BASELINES, max_examples=2)
    text = result["html"].read_text(encoding="utf-8")
    page = parse(text)
    assert page.rows == ["run", "run", "baseline", "baseline"]
    assert text.count('<span class="tag">baseline</span>') == 2
    assert len(md_metrics_rows(result["markdown"].read_text(encoding="utf-8"))) == 4
    table = R.metrics_table([R.load_run(p) for p in runs], BASELINES)
    bias = next(r for r in table.rows if r["name"] == "user_item_bias")["cells"]
    rmse = BASELINES["user_item_bias"]["rmse"]
    # a bare rating metric fills each rating column of that name; nothing else
    assert bias["rating.expected.rmse"] == bias["rating.generated.rmse"] == rmse
    assert bias["rating.expected.within_0.5"] == BASELINES["user_item_bias"]["within_0.5"]
    assert bias["rating.most_likely.n"] == 3 and "n" not in bias  # not the runs' count of all rows
    assert not {"rmse", "within_0.5"} & set(table.columns) and "pick.accuracy" not in bias
    assert table.paths["rating.expected.within_0.5"] == ("rating", "expected", "within_0.5")
    assert '<th title="rating.expected.within_0.5">within_0.5 ↑</th>' in text
    # one count column (targets): the groups' counts are read (by the verdict), not shown; training columns last
    cols = table.columns
    assert "rating.expected.n" in table.paths and not any(c.endswith((".n", ".n_scored", "n_rows")) for c in cols)
    assert [row["cells"]["targets"] for row in table.rows] == [28, None, 3, 12]  # b: no n in its file
    assert cols.index("rating.generated.rmse") < cols.index("rating.generated.unparseable_share") \
        < cols.index("train.steps")
    # degenerate columns are gone: exact accuracy of the expected rating (a mean), a scored rating's or a
    # baseline's unparseable share (0 by construction), the all-rows perplexity that repeats the group's
    assert "rating.expected.accuracy" not in table.paths and "rating.expected.unparseable_share" not in cols
    assert "perplexity" not in cols and "rating.perplexity" in cols
    assert "rating.generated.accuracy" not in bias and "rating.generated.unparseable_share" not in bias
    # a text baseline (language zh) meets the run whose columns are text.*
    copy = next(r for r in table.rows if r["name"] == "copy_last_item")["cells"]
    assert copy == {"text.bleu": 4.5, "text.chrf": 10.0, "text.rouge_l": 9.0, "targets": 12}  # n: the count column
    assert text.count("<details>") == 4


def test_flatten_metrics():
    flat = R.flatten_metrics(M.evaluate_rows(rating_rows() + text_rows()))
    assert list(flat)[:2] == ["n_rows", "n"]
    for col in ("rating.expected.rmse", "rating.generated.accuracy", "text.zh.bleu", "text.zh.perplexity",
                "pick.accuracy", "perplexity"):
        assert col in flat, col
    assert not any("by_activity" in c or "1-20" in c or "language" in c for c in flat)
    assert R.flatten_metrics({"overall": {"n": 1}, "n": 2}) == {"overall.n": 1, "n": 2}  # unique names
    assert R.flatten_metrics({"a": {"b": True, "c": "x", "d": [1], "e": None}}) == {"a.e": None}


def test_buckets():
    assert R.history_labels() == ["0", "1-5", "6-20", "21-50", "51+"]
    assert [R.history_bucket(n) for n in (0, 1, 5, 6, 20, 21, 50, 51, 999, None)] == \
        ["0", "1-5", "1-5", "6-20", "6-20", "21-50", "21-50", "51+", "51+", "unknown"]
    stats = tables.bucket_stats(rating_rows(), lambda r: R.history_bucket(r["history_len"]))
    zero = [r for r in rating_rows() if r["history_len"] == 0]
    loss = sum(r["loss"] * r["n_tokens"] for r in zero) / sum(r["n_tokens"] for r in zero)
    rmse = math.sqrt(sum((r["rating"]["expected"] - float(r["reference"])) ** 2 for r in zero) / len(zero))
    assert stats["0"]["n"] == len(zero) and stats["0"]["loss"] == pytest.approx(loss)
    assert stats["0"]["rmse"] == pytest.approx(rmse)


def test_loss_series_keeps_a_resumed_step_once():
    train, val = plots.loss_series(_logs(20, 0.5, resumed_at=16))
    assert [s for s, _ in train] == list(range(1, 21))
    assert [s for s, _ in val] == [0, 5, 10, 15, 20]


def test_missing_files_are_named(tmp_path):
    runs = make_runs(tmp_path)
    bare = tmp_path / "runs" / "only-config"
    bare.mkdir()
    _config(bare, ablation="history_only")
    result = R.build_report([runs[1], bare], tmp_path / "r.html")
    text = result["html"].read_text(encoding="utf-8")
    assert parse(text).rows == ["run", "run"]
    for name in ("summary.json", "logs.jsonl", "metrics.json", "predictions-test.jsonl"):
        assert f"missing {name}" in text
    assert result["runs"][1]["missing"] == ["summary.json", "logs.jsonl", "metrics.json", "predictions-test.jsonl"]
    # nothing but a config: no plots at all, and it says so
    alone = R.build_report([bare], tmp_path / "alone.html")
    page = parse(alone["html"].read_text(encoding="utf-8"))
    assert page.imgs == [] and alone["images"] == [] and page.rows == ["run"]
    assert "no run has training logs" in "".join(page.text)


def test_unreadable_files_do_not_stop_the_report(tmp_path):
    run = tmp_path / "broken"
    run.mkdir()
    RunDir(run).metrics.write_text("{not json", encoding="utf-8")
    RunDir(run).summary.write_text("[1, 2]", encoding="utf-8")
    RunDir(run).config.write_text("a: [unclosed", encoding="utf-8")
    result = R.build_report([run], tmp_path / "r.html")
    problems = result["runs"][0]["problems"]
    assert any(p.startswith("metrics.json: cannot read") for p in problems)
    assert "summary.json: not a JSON object" in problems
    assert any(p.startswith("config.yaml: cannot read") for p in problems)


def test_same_directory_names_are_told_apart(tmp_path):
    runs = make_runs(tmp_path)
    other = tmp_path / "other" / "rating-timeline"
    shutil.copytree(runs[0], other)
    result = R.build_report([runs[0], other], tmp_path / "r.html")
    assert [r["name"] for r in result["runs"]] == ["runs/rating-timeline", "other/rating-timeline"]


def test_bad_arguments(tmp_path):
    with pytest.raises(UsertwinError, match="does not exist"):
        R.build_report([tmp_path / "nope"], tmp_path / "r.html")
    with pytest.raises(UsertwinError, match="at least one"):
        R.build_report([], tmp_path / "r.html")
    runs = make_runs(tmp_path)
    with pytest.raises(UsertwinError, match="is a directory"):
        R.build_report(runs, tmp_path)
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------- headless Chromium


def _chromium(args: list, tmp: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-3000:]}"
    return proc


HARNESS = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<div id="result">pending</div>
<iframe id="report" src="{src}" width="1280" height="2000"></iframe>
<script>
document.getElementById("report").addEventListener("load", function () {{
  var out = document.getElementById("result");
  try {{
    var imgs = this.contentDocument.images, ok = 0;
    for (var i = 0; i < imgs.length; i++) if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++;
    out.textContent = "IMAGES " + ok + "/" + imgs.length;
  }} catch (e) {{ out.textContent = "ERROR " + e; }}
}});
</script></body></html>
"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed; .ci/run installs it")
def test_report_renders_in_headless_chromium(tmp_path):
    runs = make_runs(tmp_path)
    out = tmp_path / "report" / "report.html"
    R.build_report(runs, out, baselines=BASELINES)
    work = tmp_path / "chromium"
    work.mkdir()
    # a screenshot of the page as a reader sees it
    shot = work / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1280,2000", out.as_uri()], work)
    assert shot.is_file() and shot.read_bytes().startswith(PNG_SIGNATURE)
    assert shot.stat().st_size > 10_000
    # the DOM Chromium built: the metrics table has one row per run and per baseline
    dom = _chromium(["--dump-dom", out.as_uri()], work).stdout
    page = parse(dom)
    assert page.rows == ["run", "run", "baseline", "baseline"]
    assert len(page.imgs) == 3 and CHINESE in dom and page.scripts == 0
    # every image decoded: a harness page (which may hold a script) loads the report in an iframe
    harness = work / "harness.html"
    harness.write_text(HARNESS.format(src=out.as_uri()), encoding="utf-8")
    dom = _chromium(["--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                     harness.as_uri()], work).stdout
    match = re.search(r'<div id="result">([^<]*)</div>', dom)
    assert match, dom[:2000]
    assert match.group(1) == "IMAGES 3/3", match.group(1)


def test_no_examples_asked_for(tmp_path):
    result = R.build_report(make_runs(tmp_path), tmp_path / "r.html", max_examples=0)
    text = result["html"].read_text(encoding="utf-8")
    assert "<details>" not in text and text.count("no users asked for") == 2


# ---------------------------------------------------------------- metric specs


def test_a_registered_metric_is_in_both_tables(tmp_path, monkeypatch):
    """A new metric is its computing code plus one `MetricSpec`: then the `usertwin evaluate` table has its
    column, and the report leads its group with it and marks its best value."""
    monkeypatch.setattr(M, "METRICS", list(M.METRICS))
    text_metrics = M.text_metrics

    def with_meteor(refs, hyps, language="en", **kw):  # a stand-in for the new metric's computing function
        return {**text_metrics(refs, hyps, language, **kw), "meteor": 0.5 * len(hyps)}

    monkeypatch.setattr(M, "text_metrics", with_meteor)
    metrics = {"big": M.evaluate_rows(text_rows()), "small": M.evaluate_rows(text_rows()[:6])}
    runs = []
    for name, m in metrics.items():
        run = RunDir(tmp_path / name)
        run.path.mkdir()
        run.metrics.write_text(json.dumps(m, ensure_ascii=False), encoding="utf-8")
        runs.append(run.path)

    def report_table():
        return R.metrics_table([R.load_run(p) for p in runs], None)

    # not registered: a column without a direction, after the registered metrics
    assert "meteor" not in M.format_table(metrics["big"]).lower()
    cols = report_table().columns
    assert cols.index("text.zh.hyp_len") < cols.index("text.zh.meteor")
    assert "text.zh.meteor" not in tables.best_values(report_table())

    M.register_metric(M.MetricSpec("text", "meteor", label="METEOR", better="higher", digits=2))
    text_block = next(b for b in M.format_table(metrics["big"]).split("\n\n") if b.startswith("text\n"))
    header, _, first = text_block.splitlines()[1:4]
    assert header.split()[-1] == "METEOR" and first.split()[-1] == "6.00"
    table = report_table()
    cols = table.columns
    assert cols.index("text.zh.distinct_2") < cols.index("text.zh.meteor") < cols.index("text.zh.hyp_len")
    assert tables.best_values(table)["text.zh.meteor"] == 6.0
    result = R.build_report(runs, tmp_path / "r.html")
    html = result["html"].read_text(encoding="utf-8")
    assert '<th title="text.zh.meteor">METEOR ↑</th>' in html and '<td class="num best">6.0000</td>' in html
    assert "| **6.0000** |" in result["markdown"].read_text(encoding="utf-8")


def test_the_page_title_is_the_report_title(tmp_path):
    runs = make_runs(tmp_path)
    text = R.build_report(runs, tmp_path / "r.html", title="ratings <v2>")["html"].read_text(encoding="utf-8")
    assert "<title>ratings &lt;v2&gt;</title>" in text and "<h1>ratings &lt;v2&gt;</h1>" in text


# ---------------------------------------------------------------- the verdict


def _metrics_run(root: Path, name: str, rmse: float, mae: float, pick: float = 0.5, n: int = 10, **config) -> Path:
    run = RunDir(root / name)
    run.path.mkdir(parents=True)
    _config(run.path, **config)
    run.metrics.write_text(json.dumps({"n_rows": n, "overall": {
        "all": {"n": n, "pick": {"n": n, "accuracy": pick, "chance": 0.25}},
        "rating": {"n": n, "expected": {"n": n, "rmse": rmse, "mae": mae, "within_0.5": 0.4}}}}), encoding="utf-8")
    return run.path


RATING_BASELINES = {"global_mean": {"n": 10, "rmse": 1.2, "mae": 0.8},
                    "user_mean": {"n": 10, "rmse": 1.0, "mae": 0.9},
                    "item_mean": {"n": 10, "rmse": 1.1, "mae": 0.75}}


def _by(verdict, run: str, metric: str):
    return next(c for c in verdict.rows if c.run == run and c.metric == metric)


def verdict_rows(html: str, attrs: str) -> list[list[str]]:
    body = html.split(f"<table {attrs}>", 1)[1].split("</table>", 1)[0]
    return [re.findall(r"<td[^>]*>([^<]*)</td>", tr) for tr in body.split("<tr>")[2:]]


def test_verdict_against_the_best_baseline_of_each_metric(tmp_path):
    good = _metrics_run(tmp_path, "good", rmse=0.9, mae=0.7)
    bad = _metrics_run(tmp_path, "bad", rmse=1.2, mae=0.8, learning_rate=0.5)
    result = R.build_report([good, bad], tmp_path / "r.html", baselines=RATING_BASELINES)
    v = result["verdict"]
    # the best baseline is chosen per metric: user_mean for RMSE, item_mean for MAE
    c = _by(v, "good", "expected-rating RMSE")
    assert (c.versus, c.versus_value, c.word) == ("user_mean", 1.0, "better")
    assert c.difference == pytest.approx(-0.1) and c.relative == pytest.approx(-0.1)
    c = _by(v, "good", "expected-rating MAE")
    assert (c.versus, c.word) == ("item_mean", "better") and c.relative == pytest.approx(-0.05 / 0.75)
    c = _by(v, "bad", "expected-rating RMSE")
    assert (c.versus, c.word) == ("user_mean", "worse") and c.difference == pytest.approx(0.2)
    assert c.relative == pytest.approx(0.2) and not c.note  # the same 10 targets
    # no baseline scores pick-the-real-one: it is set against chance (the spec's `versus`)
    c = _by(v, "good", "pick-the-real-one accuracy")
    assert (c.versus, c.versus_value, c.word) == ("chance", 0.25, "better") and c.relative == pytest.approx(1.0)
    assert v.sentence.startswith("good is better than the best baseline (user_mean) on expected-rating RMSE: "
                                 "0.9000 vs 1.000, 10.0% lower")
    assert "bad is worse than the best baseline (user_mean) on expected-rating RMSE: 1.200 vs 1.000, 20.0% higher" \
        in v.sentence
    # the page leads with it: the sentence and its table come before the full metrics table
    html = result["html"].read_text(encoding="utf-8")
    assert html.index('<p class="verdict">') < html.index('<table id="verdict">') < html.index('id="metrics"')
    assert '<details class="full"><summary>All metrics' in html
    rows = verdict_rows(html, 'id="verdict"')
    assert rows[0] == ["good", "all_previous", "expected-rating RMSE", "0.9000", "user_mean", "1.000", "-0.100",
                       "-10.0%", "better"]
    assert ["bad", "all_previous", "expected-rating RMSE", "1.200", "user_mean", "1.000", "+0.200", "+20.0%",
            "worse"] in rows
    # the runs differ in their learning rate, not only in history: no ablation line
    assert v.ablations == [] and "with history vs no history" not in html
    md = result["markdown"].read_text(encoding="utf-8")
    assert md.index("## Verdict") < md.index("## Metrics") and "| good | all_previous | expected-rating RMSE |" in md


def test_verdict_names_different_targets(tmp_path):
    run = _metrics_run(tmp_path, "run", rmse=0.9, mae=0.7, n=4)
    v = R.build_report([run], tmp_path / "r.html", baselines=RATING_BASELINES)["verdict"]
    assert _by(v, "run", "expected-rating RMSE").note == "not the same targets: 4 here, 10 for user_mean"
    assert "(not the same targets: 4 here, 10 for user_mean)" in v.sentence


def test_verdict_without_baselines_says_how_to_get_them(tmp_path):
    run = _metrics_run(tmp_path, "run", rmse=0.9, mae=0.7)
    result = R.build_report([run], tmp_path / "r.html")
    v = result["verdict"]
    assert v.sentence.startswith("No baselines given, so this page cannot say whether the twin beats them: run "
                                 "`usertwin baselines --run RUN`")
    assert "run is better than chance on pick-the-real-one accuracy: 0.5000 vs 0.2500" in v.sentence
    assert _by(v, "run", "expected-rating RMSE").versus == ""
    assert "no baseline has it" in result["html"].read_text(encoding="utf-8")


def test_verdict_ablation_with_and_without_history(tmp_path):
    with_h = _metrics_run(tmp_path, "hist", rmse=0.9, mae=0.7, pick=0.6)
    # no history through the ablation; its history_strategy never reached a prompt
    without = _metrics_run(tmp_path, "nohist", rmse=1.0, mae=0.65, pick=0.4, ablation="profile_and_context")
    other = _metrics_run(tmp_path, "other", rmse=1.1, mae=0.8, use_history=False, lora_r=8)
    result = R.build_report([without, with_h, other], tmp_path / "r.html", baselines=RATING_BASELINES)
    (a, b, comps), = result["verdict"].ablations  # `other` differs in lora_r too
    assert (a, b) == ("hist", "nohist")
    rmse, mae, pick = comps
    assert (rmse.metric, rmse.word, rmse.difference) == ("expected-rating RMSE", "better", pytest.approx(-0.1))
    assert (mae.word, pick.word) == ("worse", "better")
    html = result["html"].read_text(encoding="utf-8")
    assert "with history vs no history: hist vs nohist — history is better on 2 of 3 headline metric(s)" in html
    assert verdict_rows(html, 'class="ablation"')[0] == ["expected-rating RMSE", "0.9000", "1.000", "-0.100", "-10.0%",
                                                 "better"]
    # what each run saw: "no history" whichever way it was switched off
    table = R.metrics_table([R.load_run(p) for p in (without, with_h, other)], None)
    assert [row["cells"]["history"] for row in table.rows] == ["no history", "all_previous", "no history"]
    none = _metrics_run(tmp_path, "none", rmse=1.0, mae=0.7, history_strategy="none")
    assert R.metrics_table([R.load_run(none)], None).rows[0]["cells"]["history"] == "no history"


def test_headline_metrics_come_from_the_specs(monkeypatch):
    assert M.headline_spec(("rating", "expected", "rmse")).key == "rmse"
    assert M.headline_spec(("rating", "generated", "rmse")) is None  # the verdict leads with the expected rating
    assert M.headline_spec(("text", "zh", "chrf")).header == "chrF" and M.headline_spec(("text", "bleu"))
    assert M.headline_spec(("pick", "accuracy")).versus == "chance"
    assert M.headline_spec(("rating", "expected", "within_0.5")) is None and M.headline_spec(("perplexity",)) is None
    monkeypatch.setattr(M, "METRICS", [s if s.key != "within_0.5" else M.MetricSpec(
        "rating", "within_0.5", better="higher", headline=True) for s in M.METRICS])
    assert M.headline_spec(("rating", "expected", "within_0.5")).headline


# ---------------------------------------------------------------- the full table, plots, samples, Markdown


def test_header_arrows_and_no_bold_on_ties(tmp_path):
    a = _metrics_run(tmp_path, "a", rmse=0.9, mae=0.7)
    b = _metrics_run(tmp_path, "b", rmse=1.0, mae=0.7)
    result = R.build_report([a, b], tmp_path / "r.html")
    html = result["html"].read_text(encoding="utf-8")
    assert '<th title="rating.expected.rmse">RMSE ↓</th>' in html
    assert '<th title="pick.accuracy">accuracy ↑</th>' in html and '<th title="pick.chance">chance</th>' in html
    table = R.metrics_table([R.load_run(p) for p in (a, b)], None)
    best = tables.best_values(table)
    assert best == {"rating.expected.rmse": 0.9}  # MAE, pick accuracy, within_0.5: a tie; chance: no direction
    assert html.count('class="num best"') == 1
    md = result["markdown"].read_text(encoding="utf-8")
    assert "rating.expected.rmse ↓" in md and "| **0.9000** |" in md and md.count("**0.") == 1


def test_one_bucket_plots_are_skipped_with_the_reason(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    rows = rating_rows()
    for r in rows:
        r.update(history_len=9, user_items=30)
    _jsonl(run.predictions("test"), rows)
    result = R.build_report([run.path], tmp_path / "r.html")
    assert [p.name for p in result["images"]] == []  # no logs: no loss plot either
    html = result["html"].read_text(encoding="utf-8")
    assert "Not plotted: all 28 targets fall in one history length bucket (6-20)" in html
    assert "Not plotted: all 28 targets fall in one user activity bucket (21-50)" in html
    assert "loss by history length (targets)" not in html
    md = result["markdown"].read_text(encoding="utf-8")
    assert "Not plotted: all 28 targets fall in one user activity bucket (21-50)" in md


def test_loss_points_cover_their_logging_interval():
    train = [(10, 0.5), (20, 0.4), (22, 0.7)]
    assert plots.intervals(train) == [(0, 10, 0.5), (10, 20, 0.4), (20, 22, 0.7)]
    run = R.Run(path=Path("."), label="r", logs=[{"step": s, "loss": v} for s, v in train])
    assert plots.plot_losses([run]).startswith(PNG_SIGNATURE)


def test_the_sample_shows_the_rating_error_not_the_loss(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    row = {**rating_rows()[0], "reference": "0.5", "predictions": ["5.0"], "loss": 0.356}
    row["rating"] = {**row["rating"], "expected": 4.25}
    unparseable = {**row, "target_index": 99, "predictions": ["great film"]}
    _jsonl(run.predictions("test"), [row, unparseable])
    result = R.build_report([run.path], tmp_path / "r.html")
    html = result["html"].read_text(encoding="utf-8")
    assert "<td>expected off by 3.75; generated off by 4.5</td>" in html
    assert "expected off by 3.75; generated off by unparseable" in html
    assert "0.3560" not in html  # the loss of a rating says nothing of how far off it is
    md = result["markdown"].read_text(encoding="utf-8")
    assert "| 4.25 | expected off by 3.75; generated off by 4.5 |" in md
    # text rows keep loss and perplexity
    text = R.build_report(make_runs(tmp_path / "t")[1:], tmp_path / "t.html")["html"].read_text(encoding="utf-8")
    assert "<td>loss 2.0000, perplexity 7.3891</td>" in text


def test_markdown_has_no_html_entities(tmp_path):
    runs = make_runs(tmp_path)
    md = R.build_report(runs, tmp_path / "r.html", title="ratings & <reviews>")["markdown"].read_text(encoding="utf-8")
    assert "&amp;" not in md and "&lt;" not in md and "&gt;" not in md and "&#" not in md
    assert md.startswith("# ratings & \\<reviews\\>\n")
    assert "& \\<b\\>很好\\</b\\>" in md  # a review's text as written; `<` escaped the Markdown way
    assert "<script>" not in md and "\\<script\\>alert(1)\\</script\\>" in md
    assert page._md("user_item_bias | *5*") == "user_item_bias \\| \\*5\\*"  # inside a word `_` stays plain
    assert page._md("_emphasis_") == "\\_emphasis\\_"
    assert page._md("run `usertwin evaluate`") == "run `usertwin evaluate`"  # the report's code spans stay


def _rating_rows(users: int, error: float, **extra) -> list:
    return [{"user": f"u{u}", "split": "test", "target_index": i, "item": f"Movie {i}: ", "reference": "3.0",
             "collection": "movie_rating", "rating": {"expected": 3.0 + error * (1 + u % 2)}, **extra}
            for u in range(users) for i in range(2)]


def test_verdict_intervals_from_per_target_rows(tmp_path):
    run = _metrics_run(tmp_path, "run", rmse=0.2, mae=0.15, n=50)
    _jsonl(RunDir(run).predictions("test"), _rating_rows(25, 0.1))
    rows_dir = RunDir(run).baseline_rows("test")
    rows_dir.mkdir()
    _jsonl(rows_dir / "user_mean.jsonl", _rating_rows(25, 1.0, baseline="user_mean"))
    base = {"user_mean": {"n": 50, "rmse": 1.6, "mae": 1.5}, "item_mean": {"n": 50, "rmse": 1.7, "mae": 1.4}}
    result = R.build_report([run], tmp_path / "r.html", baselines=base)
    v = result["verdict"]
    rmse = _by(v, "run", "expected-rating RMSE")
    assert rmse.versus == "user_mean" and rmse.noise == "beyond noise"
    lo, hi = rmse.interval
    assert lo < hi < 0  # the twin's errors are a tenth of the baseline's on every target
    # item_mean has no rows here: its comparison has no interval, and pick-the-real-one is against chance
    assert _by(v, "run", "expected-rating MAE").interval is None
    assert _by(v, "run", "pick-the-real-one accuracy").interval is None
    assert ", beyond noise (95% interval of the difference " in v.sentence
    rows = verdict_rows(result["html"].read_text(encoding="utf-8"), 'id="verdict"')
    assert rows[0][-2].endswith(": beyond noise") and rows[1][-2] == "–" and len(rows[0]) == 10
    assert "| 95% interval of the difference | better or worse |" in result["markdown"].read_text(encoding="utf-8")


def _rows_with_errors(errors: list, **extra) -> list:
    """Two rating targets per user, user u's expected rating off by errors[u]."""
    return [{"user": f"u{u}", "split": "test", "target_index": i, "item": f"Movie {i}: ", "reference": "3.0",
             "collection": "movie_rating", "rating": {"expected": 3.0 + e}, **extra}
            for u, e in enumerate(errors) for i in range(2)]


def test_a_difference_within_noise_reads_as_a_tie(tmp_path):
    run = _metrics_run(tmp_path, "run", rmse=0.95, mae=0.7, n=20)
    # half the users are predicted better by the twin, half by the baseline: resampling users, either can win
    _jsonl(RunDir(run).predictions("test"), _rows_with_errors([0.2, 0.6] * 5))
    RunDir(run).baseline_rows("test").mkdir()
    _jsonl(RunDir(run).baseline_rows("test") / "user_mean.jsonl",
           _rows_with_errors([0.6, 0.25] * 5, baseline="user_mean"))
    base = {"user_mean": {"n": 20, "rmse": 1.0, "mae": 0.9}}
    result = R.build_report([run], tmp_path / "r.html", baselines=base)
    c = _by(result["verdict"], "run", "expected-rating RMSE")
    assert c.interval[0] < 0 < c.interval[1] and (c.noise, c.word) == ("within noise", "tie")
    assert result["verdict"].sentence.startswith(
        "run is tied with the best baseline (user_mean) on expected-rating RMSE: 0.9500 vs 1.000, 5.0% lower, "
        "within noise (95% interval of the difference ")
    assert "is better than the best baseline" not in result["verdict"].sentence
    row = verdict_rows(result["html"].read_text(encoding="utf-8"), 'id="verdict"')[0]
    assert row[-1] == "tie" and row[-2].endswith(": within noise")
    assert '<td class="tie">tie</td>' in result["html"].read_text(encoding="utf-8")  # not green


@pytest.mark.parametrize("ci, word", [([0.4, 0.6], "better"), ([0.2, 0.31], "tie")])
def test_pick_the_real_one_takes_evaluates_interval(tmp_path, ci, word):
    run = _metrics_run(tmp_path, "run", rmse=0.9, mae=0.7, pick=0.5)
    metrics = json.loads(RunDir(run).metrics.read_text(encoding="utf-8"))
    metrics["intervals"] = {"pick_accuracy": {"value": 0.5, "ci95": ci}}
    RunDir(run).metrics.write_text(json.dumps(metrics), encoding="utf-8")
    c = _by(R.build_report([run], tmp_path / "r.html")["verdict"], "run", "pick-the-real-one accuracy")
    assert c.versus == "chance" and c.interval == pytest.approx([ci[0] - 0.25, ci[1] - 0.25]) and c.word == word


def test_ablation_intervals_from_the_two_runs_rows(tmp_path):
    with_h = _metrics_run(tmp_path, "hist", rmse=0.9, mae=0.7)
    without = _metrics_run(tmp_path, "nohist", rmse=1.0, mae=0.65, ablation="profile_and_context")
    same = _rating_rows(4, 0.5)
    _jsonl(RunDir(with_h).predictions("test"), same)
    _jsonl(RunDir(without).predictions("test"), same)
    (_, _, comps), = R.build_report([with_h, without], tmp_path / "r.html")["verdict"].ablations
    rmse = next(c for c in comps if c.metric == "expected-rating RMSE")
    assert rmse.interval == [0.0, 0.0] and rmse.noise == "within noise"  # the same rows: no difference at all


def test_verdict_text_interval_against_a_text_baseline(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    _config(run.path)
    refs = ["电影很好看", "剧情一般", "演员不错", "太长了"]
    twin = [{"user": f"u{u}", "split": "test", "target_index": i, "item": f"m{i}", "language": "zh",
             "collection": "review", "reference": refs[i], "predictions": [refs[i]]} for u in range(4) for i in range(4)]
    _jsonl(run.predictions("test"), twin)
    run.metrics.write_text(json.dumps(M.evaluate_rows(twin)), encoding="utf-8")
    copy = [dict(r, predictions=["不知道"], baseline="copy_last_item") for r in twin]
    run.baseline_rows("test").mkdir()
    _jsonl(run.baseline_rows("test") / "copy_last_item.jsonl", copy)
    base = {"copy_last_item": dict(M.text_metrics(refs * 4, ["不知道"] * 16, "zh"), fit_on="the user's history")}
    v = R.build_report([run.path], tmp_path / "r.html", baselines=base)["verdict"]
    chrf = _by(v, "run", "chrF [zh]")
    assert chrf.versus == "copy_last_item" and chrf.word == "better"
    assert chrf.noise == "beyond noise" and chrf.interval[0] > 0
