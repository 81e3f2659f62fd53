"""`usertwin prepare --config CFG.yaml`: records -> splits + samples/windows (cached), with counts."""

from __future__ import annotations

NAME = "prepare"
HELP = "records -> splits + samples/windows (cached), with counts"

# The settings prepare reads (usertwin.config's sections: "*" for every key of one, else the keys), as the code
# path reads them: the records, split, sampling and rendering (sequences/prepare.py, data/, text/), the
# tokenizer's loading and where it writes and caches. Any other setting given as a flag is refused, saying
# UNREAD; a --config file may hold it.
READS = {"data": "*", "split": "*", "sampling": "*", "render": "*", "model": ("trust_remote_code",), "output": "*"}
UNREAD = "builds the data (loading only the model's tokenizer)"


def add_arguments(p) -> None:
    from usertwin.config import add_config_flags, add_print_config_flag

    add_config_flags(p, reads=READS)
    add_print_config_flag(p)


def run(args) -> int:
    from usertwin.atomic import write_json
    from usertwin.cli.train import seed_training
    from usertwin.config import resolve
    from usertwin.rundir import RunDir
    from usertwin.sequences.prepare import prepare, summary
    from usertwin.sequences.preview import counts_table

    cfg = seed_training(resolve(args), args)
    if args.print_config:
        from usertwin.cli.train import print_config

        return print_config(cfg)
    prep = prepare(cfg, progress=args.progress)
    print(counts_table(prep))
    print(f"prepared in {prep.seconds:.1f} s")
    if cfg.output_dir:
        run_dir = RunDir(cfg.output_dir)
        write_json(run_dir.data_summary, summary(prep))
        write_json(run_dir.prepared_config, cfg.to_dict())
        print(f"wrote {run_dir.data_summary} and {run_dir.prepared_config}")
    return 0
