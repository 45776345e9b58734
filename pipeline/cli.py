"""``avfusion`` — the single command-line entry point.

Each module in ``COMMANDS`` exposes ``register(subparsers)``, adding its subcommands with
``set_defaults(func=handler)``; ``handler(args) -> int`` is the exit code. Libraries raise
exceptions; :func:`avbase.errors.run_cli` turns them into one ``error: …`` line and the
documented exit code (tracebacks only with ``--debug`` or ``AVFUSION_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from avbase.errors import run_cli

# command: (module whose ``register`` adds it, one-line help). Only the module of the command
# being run is imported, so `avfusion --help` and light commands start fast.
COMMANDS = {
    "synth": ("preprocess.cli", "write a synthetic labelled video corpus (MP4: H.264 + AAC)"),
    "shards": ("preprocess.cli", "build, verify, inspect and merge WebDataset shard sets"),
    "data": ("pipeline.data.cli", "streaming loader tools (data bench)"),
    "train": ("pipeline.train", "pretrain in this process (single rank)"),
    "eval": ("pipeline.evaluate", "downstream evaluation: linear probe, fine-tune, dense tasks"),
    "export": ("pipeline.export", "export a training checkpoint to official-key safetensors"),
    "probe": ("pipeline.pretrain.probe", "kNN probe of model weights on a labelled shard set"),
    "runs": (
        "pipeline.tracking.runs",
        "compare MLflow runs; send a run's pending tracking records",
    ),
    "model": ("pipeline.model_cli", "model utilities (parity against the official code)"),
    "deploy": ("deploy.render", "Kubernetes manifests for cluster runs"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avfusion",
        description="Audio-visual early-fusion (DeepAVFusion) pretraining: build shards, "
        "stream them into DeepSpeed training, track runs in MLflow.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks instead of one-line errors (also AVFUSION_DEBUG=1)",
    )
    parser.epilog = (
        "exit codes: 0 success, 2 unusable input or data (one 'error:' line naming the file "
        "or key), 70 internal error, 130 interrupted, 143 training stopped by SIGTERM/SIGINT "
        "after saving a checkpoint (rerun to resume); 'shards build' also 1 and 3"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = COMMANDS[chosen][0] if chosen in COMMANDS else None
    for name, (owner, help_text) in COMMANDS.items():
        if owner != module:
            sub.add_parser(name, help=help_text)
    if module is not None:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if args.debug:
        os.environ["AVFUSION_DEBUG"] = "1"
    return run_cli(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
