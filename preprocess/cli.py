"""``avfusion synth`` and ``avfusion shards {build,verify,inspect,merge}`` (``build``'s options:
:mod:`preprocess.build_cli`).

Handlers import their modules lazily so that ``avfusion --help`` stays fast. Unusable input is
an :class:`AvfusionError` (``pipeline.cli`` prints it as one ``error:`` line, exit status 2).
"""

from __future__ import annotations

import argparse
import sys

from avbase.errors import check_ranges
from preprocess.build_cli import add_build
from preprocess.pool import available_cores


def register(subparsers) -> None:
    _add_synth(subparsers)
    shards = subparsers.add_parser(
        "shards",
        help="build, verify, inspect and merge WebDataset shard sets",
        description="Shard sets (docs/FORMAT.md): tar shards of log-mel + JPEG frames + "
        "metadata per clip, manifest.json, errors.jsonl. Local or s3:// "
        "(endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).",
    )
    sub = shards.add_subparsers(dest="shards_command", metavar="ACTION", required=True)
    add_build(sub)
    _add_verify(sub)
    _add_inspect(sub)
    _add_merge(sub)


def _add_synth(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic labelled video corpus (MP4: H.264 + AAC)",
        description="Synthetic videos whose picture and sound share a learnable class pattern "
        "(a coloured shape that pulses with a class-specific tone rhythm, plus "
        "random distractors), and labels.csv (path,label) next to them.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--videos", type=int, required=True, help="number of videos")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each video (default 10)")
    p.add_argument("--classes", type=int, default=4, help="number of classes (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--workers",
        type=int,
        default=available_cores(),
        help="encoder processes (default: all available cores)",
    )
    p.add_argument(
        "--masks",
        action="store_true",
        help="also write ground truth per video: NNNNN/NNNNN_<s>.png masks of the "
        "sounding object, one per second, and NNNNN/source.wav (clean track); "
        "labels.csv gains a 'masks' column",
    )
    p.add_argument(
        "--two-sources",
        action="store_true",
        help="two sounding objects (two classes) per clip; label 'a;b'",
    )
    p.add_argument(
        "--object-scale",
        type=float,
        default=1.0,
        metavar="S",
        help="multiply every shape's radius by S (default 1: the sounding shape covers 1-4 %% of "
        "the frame; 2.5: 8-27 %%, box-sized objects as the localization metrics assume)",
    )
    p.set_defaults(func=_synth)


def _add_verify(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check a shard set completely (exit 2 on any mismatch)",
        description="Check counts, sizes and sha256 of every shard, that every "
        "sample decodes, and that mel shapes/dtype and frame sizes "
        "match the preset in the manifest, and that every .tar file in DEST is listed there. "
        "Exit status: 0 the set is intact, 2 a mismatch (MISMATCH lines) or no shard set.",
    )
    p.add_argument("dest", metavar="DEST")
    p.set_defaults(func=_verify)


def _add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a shard set's metadata or one sample",
        description="Print the manifest summary, or one sample's metadata; "
        "--png draws its frames above its spectrogram (time in seconds, "
        "mel bins, colour bar).",
    )
    p.add_argument("dest", metavar="DEST")
    p.add_argument(
        "--sample",
        metavar="KEY",
        help="sample key, or an input's file name, path or source id for its first clip "
        "(default: the first sample)",
    )
    p.add_argument("--png", metavar="FILE", help="write a picture of the sample to FILE")
    p.set_defaults(func=_inspect)


def _add_merge(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="combine separately built shard sets into one",
        description="Copy the shards of each PART (in the order given) into DEST, renumbered, "
        "with one manifest: counts and checksums kept, errors.jsonl concatenated, "
        "label maps reconciled (label_index rewritten where they differ).",
    )
    p.add_argument("parts", nargs="+", metavar="PART")
    p.add_argument("--out", required=True, metavar="DEST")
    p.set_defaults(func=_merge)


def _synth(args: argparse.Namespace) -> int:
    from preprocess.synth import synth

    check_ranges(
        ("--videos", args.videos, args.videos >= 1, "an integer >= 1"),
        ("--seconds", args.seconds, args.seconds >= 1, "seconds >= 1"),
        ("--classes", args.classes, args.classes >= 1, "an integer >= 1"),
        ("--workers", args.workers, args.workers >= 1, "an integer >= 1"),
        ("--object-scale", args.object_scale, 0 < args.object_scale <= 4, "a number in (0, 4]"),
    )
    check_ranges(
        (
            "--classes",
            args.classes,
            args.classes >= 2 or not args.two_sources,
            "an integer >= 2 with --two-sources",
        )
    )
    synth(
        args.out,
        args.videos,
        args.seconds,
        args.classes,
        args.seed,
        args.workers,
        masks=args.masks,
        two_sources=args.two_sources,
        object_scale=args.object_scale,
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from preprocess.verify import verify

    problems, summary = verify(args.dest)
    for line in problems[:50]:
        print(f"MISMATCH {line}")
    print(summary)
    return 2 if problems else 0  # unusable data (avfusion --help)


def _inspect(args: argparse.Namespace) -> int:
    from preprocess.preview import inspect

    print(inspect(args.dest, args.sample, args.png))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from preprocess.merge import merge

    manifest = merge(args.parts, args.out)
    print(
        f"{args.out}: {manifest['num_samples']} samples in {len(manifest['shards'])} shards "
        f"from {len(args.parts)} parts",
        file=sys.stderr,
    )
    return 0
