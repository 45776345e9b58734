"""``avfusion`` — the single command-line entry point.

Each listed module exposes ``register(subparsers)``, adding its subcommands with
``set_defaults(func=handler)``; ``handler(args) -> int`` is the exit code. Handlers report
unusable input by raising ``SystemExit("error: ...")`` (one line, non-zero exit) before any work.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "preprocess.cli",        # synth, shards build | verify | inspect | merge
    "model.parity",          # model parity
    "pipeline.train",        # train (single-process shortcut)
    "pipeline.export",       # export CKPT --out model.safetensors
    "pipeline.runs",         # runs compare
    "pipeline.probe",        # probe WEIGHTS --shards DEST
    "pipeline.data_cli",     # data bench
    "deploy.render",         # deploy render (Kubernetes manifests for one run)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avfusion",
        description="Audio-visual early-fusion (DeepAVFusion) pretraining: build shards, "
                    "stream them into DeepSpeed training, track runs in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("avfusion: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
