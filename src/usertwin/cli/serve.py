"""`usertwin serve --run RUN [--data RECORDS]`: the twin behind an OpenAI-compatible HTTP API and a page."""

from __future__ import annotations

import os

NAME = "serve"
HELP = "serve a twin over an OpenAI-compatible HTTP API (chat, completions, twin endpoints) with a page at /"
KEY_ENV = "USERTWIN_API_KEY"  # a key on the command line is visible to every user of the machine (ps)
GPU_BATCH, CPU_BATCH = 32, 8  # --max_batch's default on each (README: Serve, measured on the quick start's twin)


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="a train run directory: its config, best weights, twin.json")
    p.add_argument("--data", help="records file whose users can be named by id (request field `user`)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--api_key", default=os.environ.get(KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${KEY_ENV}; unset: no key)")
    p.add_argument("--model_name",
                   help="the model id clients send (default: the run directory's name)")
    p.add_argument("--batch_wait_ms", type=float, default=5.0,
                   help="how long the model waits to collect concurrent requests into one batch")
    p.add_argument("--max_batch", type=int,
                   help=f"most requests in one batch (continuous batching: decoding at once) (default: {GPU_BATCH} on a GPU, {CPU_BATCH} on a CPU, where a "
                        "forward costs about in proportion to its rows: smaller batches answer the first requests "
                        "sooner; README, Serve, has the measurements)")
    p.add_argument("--batching", choices=("continuous", "static"),
                   help="continuous: requests join and leave the running batch between decode steps, so none waits "
                        "for another's whole generation (with --decode static the rows live in fixed key/value slots "
                        "and each decode step is a CUDA graph on a GPU); static: a batch decodes until all its rows "
                        "are done (default continuous)")
    p.add_argument("--max_request_bytes", type=int, default=1_000_000,
                   help="largest request body taken; a larger one is refused with 413 before it is read whole")
    from usertwin.cli.twinflags import add_decode_flag, add_prefill_flag

    add_decode_flag(p)
    add_prefill_flag(p)


def run(args) -> int:
    import sys

    from usertwin.errors import UsertwinError

    try:
        import uvicorn

        from usertwin.serve.app import create_app, model_name_of
    except ImportError as e:
        raise UsertwinError(f"serve needs the serve extra ({e.name} is missing): pip install 'usertwin[serve]'") \
            from None
    from usertwin.twin import Twin

    if (args.max_batch is not None and args.max_batch < 1) or args.batch_wait_ms < 0 or args.max_request_bytes < 1:
        raise UsertwinError("--max_batch and --max_request_bytes must be at least 1 and --batch_wait_ms not "
                            "negative")
    batching = args.batching or "continuous"
    _check_port(args.host, args.port)  # before the model loads: a taken port should fail in a second, not a minute
    twin = Twin.load(args.run, records=args.data, decode=args.decode, progress=args.progress,
                     prefill=args.prefill)
    name = args.model_name or model_name_of(args.run)
    app = create_app(twin, api_key=args.api_key, model_name=name, wait_ms=args.batch_wait_ms,
                     max_batch=args.max_batch or _default_batch(), max_request_bytes=args.max_request_bytes,
                     batching=batching)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"usertwin serve: warning: listening on {args.host} without --api_key: anyone who can reach it "
              "can use the twin", file=sys.stderr)
    print(f"usertwin serve: model {name!r} at http://{args.host}:{args.port}/ (OpenAI base_url "
          f"http://{args.host}:{args.port}/v1)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _default_batch() -> int:
    import torch

    return GPU_BATCH if torch.cuda.is_available() else CPU_BATCH  # the twin loads onto the GPU when there is one


def _check_port(host: str, port: int) -> None:
    import socket

    from usertwin.errors import UsertwinError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise UsertwinError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port or --host") \
            from None
