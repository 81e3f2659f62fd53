"""--engine vllm: generation through vLLM's offline API with the prompts usertwin renders. vLLM needs a CUDA GPU,
so these tests put a fake `vllm` module in its place that records what it is given and answers fixed tokens."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import fake_vllm as fake_vllm_module
from helpers import write_records

from usertwin.cli import main
from usertwin.errors import UsertwinError

REPLY = "4.0"


def _record(uid: str) -> dict:
    items = [{"continuation_prefix": f"Movie {i} (2000) (Drama): ", "continuation": f"{i % 5 + 1}.0",
              "timestamp": 1_000_000 + 60 * i} for i in range(6)]
    return {"user_hash": uid, "user": {"profile": {"name": uid}},
            "task": {"description": "Rate movies.", "language": "en",
                     "task_behavior_collections": [{"type": "movie_rating", "data": items}]}}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("vllm")
    data = write_records(tmp / "r.jsonl", [_record(u) for u in ("a", "b")])
    run = tmp / "run"
    assert main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output_dir", str(run),
                 "--max_length", "192", "--learning_rate", "0.01", "--no-progress"]) == 0
    return run, data


@pytest.fixture
def fake_vllm(monkeypatch, tokenizer):
    module, made = fake_vllm_module(tokenizer, REPLY)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return made


def test_generation_runs_on_vllm_with_the_prompts_usertwin_renders(made, fake_vllm, tokenizer):
    from usertwin.twin import Twin

    run, data = made
    twin = Twin.load(run, records=data, engine="vllm", engine_args={"gpu_memory_utilization": 0.5})
    folder = run / "vllm-model"
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    llm = fake_vllm[0]
    assert llm.kw == {"model": str(folder), "tokenizer": str(folder), "gpu_memory_utilization": 0.5}
    texts = twin.generate(user="a", item="Heat (1995): ", num_samples=3, temperature=0.8, seed=7, top_k=50,
                          max_new_tokens=5)
    assert texts == [REPLY] * 3  # cut at the end of turn, as usertwin's own generation is
    requests, params = llm.calls[-1]
    assert [r["prompt_token_ids"] for r in requests] == [twin.prompt(user="a", item="Heat (1995): ", room=5)] * 3
    eot = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
    assert [p.kw["seed"] for p in params] == [7, 8, 9]  # sample i draws with seed + i
    assert params[0].kw == {"n": 1, "temperature": 0.8, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0,
                            "max_tokens": 5, "seed": 7, "stop_token_ids": eot, "skip_special_tokens": False}
    greedy = twin.generate(user="b", item="Heat (1995): ", num_samples=2, temperature=0, max_new_tokens=5)
    requests, params = llm.calls[-1]
    assert greedy == [REPLY, REPLY] and len(requests) == 1 and params[0].kw["seed"] is None
    Twin.load(run, records=data, engine="vllm")  # the written folder is reused, not written again
    assert fake_vllm[1].kw == {"model": str(folder), "tokenizer": str(folder)}


def test_simulate_with_engine_vllm(made, fake_vllm, tmp_path, capsys):
    run, data = made
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"continuation_prefix": "Heat (1995): ", "type": "movie_rating"}) + "\n")
    out = tmp_path / "sim.jsonl"
    assert main(["simulate", "--run", str(run), "--data", str(data), "--all", "--items", str(items), "-o", str(out),
                 "--engine", "vllm", "--max_new_tokens", "6", "--tensor_parallel_size", "1", "--no-progress"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["user"], r["generations"], r["ratings"]) for r in rows] == [("a", [REPLY], [4.0]), ("b", [REPLY], [4.0])]
    assert sum(r["rating"]["probs"][0] for r in rows) > 0  # scored by the transformers model beside vLLM
    # max_model_len: the run's max_length + the generation
    assert fake_vllm[0].kw["max_model_len"] == 192 + 6 and fake_vllm[0].kw["tensor_parallel_size"] == 1


def test_vllm_flags_without_engine_vllm_say_they_do_nothing(made, tmp_path, capsys):
    run, data = made
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"continuation_prefix": "Heat (1995): "}) + "\n")
    assert main(["simulate", "--run", str(run), "--data", str(data), "--users", "a", "--items", str(items),
                 "-o", str(tmp_path / "o.jsonl"), "--gpu_memory_utilization", "0.8", "--max_new_tokens", "2",
                 "--no-progress"]) == 0
    assert ("note: without --engine vllm these do nothing: --gpu_memory_utilization (usertwin's engine sizes "
            "itself: --batch_size)") in capsys.readouterr().err


def test_without_vllm_the_engine_is_refused_before_the_model_loads(made, monkeypatch):
    import usertwin.twin.engine as engine
    from usertwin.twin import Twin

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    monkeypatch.setattr(engine, "load_twin_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UsertwinError, match="--engine vllm needs vLLM"):
        Twin.load(made[0], engine="vllm")
    with pytest.raises(UsertwinError, match="engine must be one of usertwin, vllm, not 'tgi'"):
        Twin.load(made[0], engine="tgi")
