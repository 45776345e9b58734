"""``avfusion shards build``: its options and its run (flags checked before any input is read).

Handlers import their modules lazily so that ``avfusion --help`` stays fast. Unusable input is
an :class:`AvfusionError` (``pipeline.cli`` prints it as one ``error:`` line, exit status 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from avbase.errors import AvfusionError, check_ranges
from avbase.urls import refuse_credentials
from preprocess.datasets.cli import DATASET_HELP, add_dataset_options, dataset_spec
from preprocess.pool import available_cores


def add_build(sub) -> None:
    """The ``shards build`` subcommand."""
    p = sub.add_parser(
        "build",
        help="decode videos into a shard set",
        description=textwrap.fill(
            "Decode INPUTs (files, directories scanned recursively, .txt/.csv lists "
            "with a 'path' and an optional 'label' column; local or s3://) with PyAV "
            "and write shards to DEST. Or, with --dataset, read a public dataset's index "
            "files as published and find each listed clip under --media (docs/DATASETS.md). "
            "Inputs that yield no sample are listed in "
            "errors.jsonl. Clips are written in a seeded random order (each shard a "
            "random sample of the corpus). Output bytes depend only on the inputs and "
            "options. Exit status: 0 a set with samples was written, 1 no input yielded a "
            "sample, 2 unusable arguments or destination (or no listed clip found), 3 some "
            "inputs failed and --strict was given.",
            width=79,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=DATASET_HELP,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT")
    p.add_argument("--out", required=True, metavar="DEST", help="directory or s3://bucket/prefix")
    p.add_argument(
        "--preset",
        default="deepavfusion",
        help="audio front end: deepavfusion (log10 mel) or audiomae (Kaldi fbank)",
    )
    p.add_argument("--clip-seconds", type=float, default=10.0, help="clip length (default 10)")
    p.add_argument(
        "--min-clip-seconds",
        type=float,
        default=2.0,
        help="shortest final partial clip kept (default 2)",
    )
    p.add_argument(
        "--frame-rate", type=float, default=1.0, help="stored frames per second (default 1)"
    )
    p.add_argument("--frame-size", type=int, default=256, help="frame short side (default 256)")
    p.add_argument(
        "--keep-waveform",
        action="store_true",
        help="also store the clip's mono waveform as <key>.flac (for separation)",
    )
    p.add_argument(
        "--samples-per-shard", type=int, default=1000, help="samples per tar shard (default 1000)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=available_cores(),
        help="decoder processes (default: all available cores)",
    )
    p.add_argument(
        "--decode-threads",
        type=int,
        default=0,
        help="video decoder threads per worker (default 0: available cores / workers)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="wall-clock seconds per video before its worker is killed (default 300)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted build: redo only shards without a completion record",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the shard set or unfinished build at DEST (its shard files, "
        "manifest, errors and progress records are removed first)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 3 when any input failed (the set is still written)",
    )
    p.add_argument(
        "--no-shuffle",
        dest="shuffle",
        action="store_false",
        help="write clips in input order (sorted paths, then clip order)",
    )
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument(
        "--shuffle-window",
        type=int,
        default=256,
        metavar="N",
        help="inputs whose clips are permuted together (default 256; their decoded "
        "samples wait in a local temporary file)",
    )
    p.add_argument(
        "--part-index",
        type=int,
        default=None,
        help="build only this slice of the (shuffled) inputs (default: "
        "$JOB_COMPLETION_INDEX when --num-parts > 1)",
    )
    p.add_argument("--num-parts", type=int, default=1, help="number of slices (default 1)")
    p.add_argument(
        "--classes",
        default=None,
        metavar="FILE",
        help="class list (one name per line or first CSV column) fixing label_index, so "
        "that train and test sets agree (default: the sorted labels seen; with --dataset "
        "the index's class list)",
    )
    add_dataset_options(p)
    p.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    """``avfusion shards build``: exit 0, 1 (no sample at all) or 3 (``--strict`` and failures)."""
    from preprocess.build import BuildConfig, build
    from preprocess.options import SampleOptions

    opts = SampleOptions(
        args.preset,
        args.clip_seconds,
        args.min_clip_seconds,
        args.frame_rate,
        args.frame_size,
        keep_waveform=args.keep_waveform,
    )
    part = args.part_index
    if part is None:
        part = int(os.environ.get("JOB_COMPLETION_INDEX", "0")) if args.num_parts > 1 else 0
    problems = opts.problems()
    if problems:
        raise AvfusionError(problems[0])
    check_ranges(
        (
            "--samples-per-shard",
            args.samples_per_shard,
            args.samples_per_shard >= 1,
            "an integer >= 1",
        ),
        ("--workers", args.workers, args.workers >= 1, "an integer >= 1"),
        ("--timeout", args.timeout, args.timeout > 0, "seconds > 0"),
        ("--decode-threads", args.decode_threads, args.decode_threads >= 0, "an integer >= 0"),
        ("--num-parts", args.num_parts, args.num_parts >= 1, "an integer >= 1"),
        ("--shuffle-window", args.shuffle_window, args.shuffle_window >= 1, "an integer >= 1"),
        (
            "--part-index",
            part,
            0 <= part < args.num_parts,
            f"an integer in [0, --num-parts {args.num_parts})",
        ),
    )
    if args.resume and args.force:
        raise AvfusionError("--resume and --force exclude each other")
    dataset = dataset_spec(args)
    manifest = build(
        BuildConfig(
            tuple(args.inputs),
            args.out,
            opts,
            samples_per_shard=args.samples_per_shard,
            workers=args.workers,
            timeout=args.timeout,
            decode_threads=args.decode_threads,
            resume=args.resume,
            part_index=part,
            num_parts=args.num_parts,
            shuffle=args.shuffle,
            seed=args.seed,
            window=args.shuffle_window,
            force=args.force,
            classes=_classes(args.classes),
            dataset=dataset,
        )
    )
    if manifest is None:
        print(f"{args.out}: already complete", file=sys.stderr)
        return 0
    print(
        f"{args.out}: {manifest['num_samples']} samples in {len(manifest['shards'])} shards, "
        f"{manifest['num_failed']} inputs failed (errors.jsonl)",
        file=sys.stderr,
    )
    if "dataset" in manifest:
        from preprocess.datasets.summary import summary_line

        print(f"{args.out}: {summary_line(manifest['dataset'])}", file=sys.stderr)
    if not manifest["num_samples"]:
        print(f"error: no input yielded a sample (see {args.out}/errors.jsonl)", file=sys.stderr)
        return 1
    return 3 if args.strict and manifest["num_failed"] else 0


def _classes(path: str | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    import fsspec

    from preprocess.labels import read_class_file

    try:
        with fsspec.open(refuse_credentials(path), "rt", encoding="utf-8-sig") as f:
            return tuple(read_class_file(path, f.read()))
    except FileNotFoundError:
        raise AvfusionError(f"--classes {path}: no such file") from None
