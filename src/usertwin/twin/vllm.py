"""`--engine vllm`: a twin's generation through vLLM's offline API (the seed scripts' inference engine), fed the
token ids usertwin renders, so the prompts are exactly the ones `--engine usertwin` decodes from.

vLLM loads a plain transformers folder: the twin's weights (a LoRA adapter merged) are written once to
RUN/vllm-model (engine.save_pretrained) and reused. Scoring (rating distributions, likelihoods) stays with the
transformers model; only generation moves. vLLM draws its own random numbers: a seed gives the same texts run
after run, not the texts `--engine usertwin` draws with it (greedy decoding agrees up to kernel numerics)."""

from __future__ import annotations

import importlib
import shutil
import tempfile
from pathlib import Path

from usertwin.atomic import recover_dir, replace_dir
from usertwin.config import GenerateSettings
from usertwin.errors import UsertwinError

ENGINES = ("usertwin", "vllm")  # --engine of simulate and predict --scenario
FOLDER = "vllm-model"


def vllm_module():
    """The installed vllm package, or a message saying what to do without it."""
    try:
        return importlib.import_module("vllm")
    except ImportError:
        raise UsertwinError("--engine vllm needs vLLM (pip install vllm, on a machine with a CUDA GPU); without it "
                            "use the default --engine usertwin") from None


def model_folder(engine, run_dir=None) -> Path:
    """The twin as a plain transformers folder vLLM can load: RUN/vllm-model, written the first time (complete
    or absent: a temporary folder renamed); without a run, a temporary folder."""
    final = Path(run_dir) / FOLDER if run_dir else Path(tempfile.mkdtemp(prefix="usertwin-vllm-")) / FOLDER
    if recover_dir(final).is_dir():
        return final
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed run's half-written copy
    tmp.mkdir(parents=True)
    engine.save_pretrained(tmp)
    replace_dir(tmp, final)
    return final


class VllmGeneration:
    """Generates for an Engine (its renderer's prompt ids in, its decode out) with a vLLM `LLM`."""

    def __init__(self, engine, llm, sampling_params):
        self.engine, self.llm, self.params = engine, llm, sampling_params

    @classmethod
    def load(cls, engine, run_dir=None, **engine_args) -> VllmGeneration:
        """`engine_args`: vLLM's own (gpu_memory_utilization, tensor_parallel_size, max_model_len, ...), unset
        ones left to vLLM."""
        vllm = vllm_module()
        folder = str(model_folder(engine, run_dir))
        args = {k: v for k, v in engine_args.items() if v is not None}
        return cls(engine, vllm.LLM(model=folder, tokenizer=folder, **args), vllm.SamplingParams)

    def generate_texts(self, prompts: list[list[int]], gen: GenerateSettings, seeds: list[int] | None = None,
                       stream: list | None = None) -> list[list[str]]:
        """As Engine.generate_texts: `gen.num_samples` texts per prompt, sample i of prompt j drawn with seed
        seeds[j] + i (one vLLM request each, so a sample does not depend on how many are drawn); greedy decoding
        runs each prompt once and repeats it."""
        if stream and any(stream):
            raise UsertwinError("streaming needs --engine usertwin")
        gen = gen.resolved()
        n = gen.num_samples if gen.temperature > 0 else 1
        if seeds is None:
            seeds = [gen.seed if gen.seed is not None else None] * len(prompts)
        requests = [{"prompt_token_ids": list(p)} for p in prompts for _ in range(n)]
        params = [self.sampling(gen, None if s is None or gen.temperature == 0 else s + i)
                  for s in seeds for i in range(n)]
        outs = self.llm.generate(requests, params, use_tqdm=False)
        texts = [self.engine.decode(list(o.outputs[0].token_ids)) for o in outs]
        return [texts[j * n:(j + 1) * n] * (gen.num_samples // n) for j in range(len(prompts))]

    def sampling(self, gen: GenerateSettings, seed: int | None):
        """vLLM's SamplingParams for one sample: our settings under its names, stopping at the twin's
        end-of-turn with the special tokens kept (Engine.decode cuts there)."""
        return self.params(n=1, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k or -1,
                           repetition_penalty=gen.repetition_penalty, max_tokens=gen.max_new_tokens, seed=seed,
                           stop_token_ids=[self.engine.eot_id], skip_special_tokens=False)
