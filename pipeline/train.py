"""Training entry point.

deepspeed [launcher args] --module pipeline.train --config configs/debug.yaml [key=value ...]
torchrun --nproc-per-node 2 -m pipeline.train --config configs/debug.yaml
avfusion train --config configs/debug.yaml            # single process
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline.config import load_config


def build_parser(
    parser: argparse.ArgumentParser | None = None, config_required: bool = True
) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=config_required, help="YAML run config (see configs/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.max_steps=20 data.batch_size=4",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and what a launch derives from it (world size, "
        "accumulation steps, effective batch, lr, steps per epoch) as one JSON line; no training",
    )
    parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        metavar="N",
        help="with --dry-run: the launch's world size (default: $WORLD_SIZE, else 1)",
    )
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )
    return parser


def dry_run(args: argparse.Namespace, cfg, optim, data) -> int:
    """``--dry-run``: one JSON line {config, derived}; nothing starts."""
    from avbase.urls import redact_tree
    from pipeline.config import to_dict
    from pipeline.engine.preflight import dry_run as derive

    world = args.world_size or int(os.environ.get("WORLD_SIZE", 1))
    if world < 1:
        raise ValueError(f"--world-size: must be >= 1, got {world}")
    derived = derive(cfg.engine_spec(), optim, data, cfg.train.seed, world)
    print(json.dumps({"config": redact_tree(to_dict(cfg)), "derived": derived}), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        return dry_run(args, cfg, cfg.optim, cfg.data)
    from pipeline.engine.distributed import process_group
    from pipeline.engine.preflight import preflight
    from pipeline.pretrain.trainer import pretrain

    preflight(cfg)  # manifest, batch arithmetic, writable folders: before DeepSpeed starts
    with process_group() as info:
        pretrain(cfg, info)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="pretrain in this process (single rank)",
        description="Single-process shortcut for `python -m pipeline.train`; "
        "use `deepspeed --module pipeline.train` for several ranks.",
    )
    build_parser(p).set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    from pipeline.engine.distributed import rank_main

    return rank_main(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
