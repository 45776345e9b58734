"""Downstream evaluation entry point (linear probe, fine-tune, dense tasks; see pipeline/eval).

    deepspeed [launcher args] --module pipeline.evaluate --config configs/eval/debug_linear.yaml [key=value ...]
    torchrun --nproc-per-node 2 -m pipeline.evaluate --config configs/eval/debug_linear.yaml
    avfusion eval --config configs/eval/debug_linear.yaml            # single process
    avfusion eval score --task avs --input predictions.npz         # score saved predictions

The last line of stdout (rank 0) is one JSON object: the task and its final metrics.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.eval import score
from pipeline.train import build_parser as _add_arguments
from pipeline.train import dry_run


def build_parser(
    parser: argparse.ArgumentParser | None = None, config_required: bool = True
) -> argparse.ArgumentParser:
    """``--config`` (configs/eval/*.yaml), ``key=value`` overrides, the launcher's ``--local_rank``."""
    return _add_arguments(
        parser
        or argparse.ArgumentParser(
            prog="python -m pipeline.evaluate",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        ),
        config_required,
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.eval.config import load_eval_config

    cfg = load_eval_config(args.config, args.overrides)
    if args.dry_run:
        return dry_run(args, cfg, cfg.optim, cfg.data.train)
    from pipeline.engine.distributed import process_group
    from pipeline.eval.preflight import preflight
    from pipeline.eval.tasks import TASKS

    preflight(cfg)  # encoder, data sets, batch arithmetic, output folder: before DeepSpeed starts
    with process_group() as info:
        metrics = TASKS[cfg.task](cfg, info)
    if info.is_main:
        print(json.dumps({"task": cfg.task, **metrics}), flush=True)
    return 0


SCORE = "score"  # ``avfusion eval score …``: the first positional picks the scoring form


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="downstream evaluation in this process (single rank); `eval score` scores saved "
        "predictions",
        description="Two forms.\n\n"
        "  avfusion eval --config C [KEY=VALUE ...]\n"
        "      Single-process shortcut for `python -m pipeline.evaluate`;\n"
        "      use `deepspeed --module pipeline.evaluate` for several ranks.\n\n"
        "  avfusion eval score --task avs|localization|separation --input FILE.npz\n"
        "      Score saved predictions of any system with the dense metrics the evaluations\n"
        "      use (definitions: docs/EVAL.md); one JSON line.\n\n" + score.USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build_parser(p, config_required=False)
    score.add_arguments(p)
    p.set_defaults(func=lambda args: _dispatch(p, args))


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``score`` as the first positional → the scoring form; else the evaluation, as before."""
    if args.overrides[:1] == [SCORE]:
        if args.config is not None or args.overrides[1:]:
            parser.error("`eval score` takes --task and --input only")
        missing = [f"--{k}" for k in ("task", "input") if getattr(args, k) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
        return score.run(args)
    if args.task is not None or args.input is not None:
        parser.error("--task and --input belong to `avfusion eval score`")
    if args.config is None:
        parser.error("the following arguments are required: --config")
    return run(args)


def main(argv: list[str] | None = None) -> int:
    from pipeline.engine.distributed import rank_main

    return rank_main(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
