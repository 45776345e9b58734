"""Training entry point.

deepspeed [launcher args] --module pipeline.train --config configs/debug.yaml [key=value ...]
torchrun --nproc-per-node 2 -m pipeline.train --config configs/debug.yaml
avfusion train --config configs/debug.yaml            # single process
"""

from __future__ import annotations

import argparse
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
        "--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS
    )
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from pipeline.distributed import process_group
    from pipeline.preflight import preflight
    from pipeline.trainer import Trainer

    preflight(cfg)  # manifest, batch arithmetic, writable folders: before DeepSpeed starts
    with process_group() as info:
        Trainer(cfg, info).fit()
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
    from pipeline.distributed import rank_main

    return rank_main(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
