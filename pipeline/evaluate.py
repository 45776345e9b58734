"""Downstream evaluation entry point (linear probe, fine-tune, dense tasks; see pipeline/eval).

    deepspeed [launcher args] --module pipeline.evaluate --config configs/eval/debug_linear.yaml [key=value ...]
    torchrun --nproc-per-node 2 -m pipeline.evaluate --config configs/eval/debug_linear.yaml
    avfusion eval --config configs/eval/debug_linear.yaml            # single process

The last line of stdout (rank 0) is one JSON object: the task and its final metrics.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.train import build_parser as _add_arguments


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``--config`` (configs/eval/*.yaml), ``key=value`` overrides, the launcher's ``--local_rank``."""
    return _add_arguments(
        parser
        or argparse.ArgumentParser(
            prog="python -m pipeline.evaluate",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.eval.config import load_eval_config

    cfg = load_eval_config(args.config, args.overrides)
    from pipeline.distributed import process_group
    from pipeline.eval.preflight import preflight
    from pipeline.eval.tasks import TASKS

    preflight(cfg)  # encoder, data sets, batch arithmetic, output folder: before DeepSpeed starts
    with process_group() as info:
        metrics = TASKS[cfg.task](cfg, info)
    if info.is_main:
        print(json.dumps({"task": cfg.task, **metrics}), flush=True)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="downstream evaluation in this process (single rank)",
        description="Single-process shortcut for `python -m pipeline.evaluate`; "
        "use `deepspeed --module pipeline.evaluate` for several ranks.",
    )
    build_parser(p).set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    from pipeline.distributed import rank_main

    return rank_main(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
