"""``avfusion model parity``: numeric parity of ``model/`` with official-code fixtures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from model.parity import TOLERANCE, ParityError, run_fixture
from model.parity.heads import HEAD_TOLERANCE


def register(subparsers) -> None:
    model = subparsers.add_parser(
        "model", help="model utilities (parity against the official code)"
    )
    sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser(
        "parity",
        help="check numeric parity with official-code fixtures",
        description="For each fixture: build the model its config describes, set the weights by "
        "the fixture's rule and print one JSON line. Pre-training fixtures "
        "(shared/fixtures/parity): the masked and unmasked passes with its masks (fp32, CPU), "
        "the max abs/rel error of every output. Dense-task head fixtures "
        "(shared/fixtures/heads): encoder + AVS or separation head on the release's layers, "
        "max |ours - logits| / max |logits| (rel_error). Exits 1 when any error exceeds the "
        "tolerance (targets must be exact) or the official keys do not all map.",
    )
    p.add_argument("fixtures", nargs="+", metavar="FIXTURE", help="parity fixture .pt file(s)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help=f"pre-training fixtures: max abs error (default: the fixture's, else {TOLERANCE:g}); "
        f"head fixtures: max relative error (default {HEAD_TOLERANCE:g})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 when every fixture passes, 1 otherwise; a ParityError becomes one ``error:`` line (run_cli)."""
    for path in args.fixtures:  # validate every file before the slow work
        if not Path(path).is_file():
            raise ParityError(f"{path}: fixture file not found")
    ok = True
    for path in args.fixtures:
        report = run_fixture(path, args.tolerance)
        print(json.dumps(report), flush=True)
        ok &= report["ok"]
    return 0 if ok else 1
