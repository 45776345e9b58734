"""Training entry point.

deepspeed [launcher args] --module pipeline.train --config configs/debug.yaml [key=value ...]
torchrun --nproc-per-node 2 -m pipeline.train --config configs/debug.yaml
avfusion train --config configs/debug.yaml            # single process
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.config import load_config
from preprocess.errors import run_cli


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m pipeline.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="YAML run config (see configs/)")
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
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
    )
    import torch.distributed as dist

    from pipeline.distributed import init_distributed
    from pipeline.trainer import Trainer

    info = init_distributed()
    try:
        Trainer(cfg, info).fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
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
    """Every rank runs this; expected errors are printed once, by rank 0 (they are the same on all)."""
    return run_cli(run, build_parser().parse_args(argv), quiet=os.environ.get("RANK", "0") != "0")


if __name__ == "__main__":
    sys.exit(main())
