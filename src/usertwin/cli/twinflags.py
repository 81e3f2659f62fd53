"""The flags of the commands that use a twin (predict, simulate, serve): how it decodes, how it scores, what
generates."""

from __future__ import annotations


def add_decode_flag(p) -> None:
    from usertwin.config import DECODES

    p.add_argument("--decode", choices=DECODES, default="auto",
                   help="how generation decodes: dynamic (transformers' default cache), static (a static KV cache "
                        "compiled into CUDA graphs on a GPU: on an H100 the decode step fell from 29 to 3.6 ms at "
                        "batch 1, after 35-56 s of compiling per batch/width bucket), or auto: static on a GPU for "
                        "jobs of at least 2,000 decode steps at batches of at most 64 rows, where it paid, else "
                        "dynamic (default auto)")


def add_engine_flags(p) -> None:
    from usertwin.twin.vllm import ENGINES

    p.add_argument("--engine", choices=ENGINES, default="usertwin",
                   help="what generates: usertwin (transformers, batched with the KV cache) or vllm (vLLM's offline "
                        "API given the prompts usertwin renders; needs vLLM and a CUDA GPU; the twin is written once to "
                        "RUN/vllm-model for it; scoring stays with transformers) (default usertwin)")
    p.add_argument("--gpu_memory_utilization", type=float,
                   help="--engine vllm: the share of GPU memory vLLM may take (the scoring model needs some too) "
                        "(default: vLLM's)")
    p.add_argument("--tensor_parallel_size", type=int, help="--engine vllm: GPUs the model is split over "
                                                              "(default: vLLM's, 1)")
    p.add_argument("--max_model_len", type=int,
                   help="--engine vllm: the longest prompt + generation vLLM plans for (default: the run's "
                        "max_length + --max_new_tokens)")


VLLM_FLAGS = ("gpu_memory_utilization", "tensor_parallel_size", "max_model_len")


def engine_args(args, max_length: int, max_new_tokens: int) -> dict:
    """Twin.load's engine_args from the flags; vLLM's flags given without --engine vllm are said to do nothing."""
    import sys

    given = {k: getattr(args, k) for k in VLLM_FLAGS if getattr(args, k, None) is not None}
    if args.engine != "vllm":
        if given:
            print(f"note: without --engine vllm these do nothing: {', '.join('--' + k for k in given)} (usertwin's "
                  "engine sizes itself: --batch_size)", file=sys.stderr)
        return {}
    given.setdefault("max_model_len", max_length + max_new_tokens)
    return given


def add_prefill_flag(p) -> None:
    from usertwin.config import PREFILLS

    p.add_argument("--prefill", choices=PREFILLS, default="shared",
                   help="how prompts that begin alike are read: shared (one user's prompts -- the same history, "
                        "different items -- read that history once, for scoring ratings and for generation alike; "
                        "the same results up to float rounding) or each (every prompt read whole, as before) "
                        "(default shared)")


def add_batching_flag(p) -> None:
    from usertwin.config import BATCHINGS

    p.add_argument("--batching", choices=BATCHINGS, default="auto",
                   help="how generation batches (simulate, predict, --scenario): continuous (at most --batch_size "
                        "prompts decode at once; each "
                        "prompt joins as soon as others finish, so no row decodes on past its end waiting for the "
                        "longest; prompts of one user joining together still share their history's prefill), "
                        "static (a batch decodes until its longest row ends, as before), or auto: continuous, "
                        "except with --engine vllm or the compiled static cache (--decode static, or auto's choice "
                        "on a GPU); --batching continuous --decode static runs the rows in fixed slots, each "
                        "decode step a CUDA graph on a GPU (default auto). The same texts either way")
