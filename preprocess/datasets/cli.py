"""The ``--dataset`` options of ``avfusion shards build`` (registered by ``preprocess.cli``)."""

from __future__ import annotations

import argparse

from avbase.errors import AvfusionError
from preprocess.datasets import NAMES

DATASET_HELP = """public datasets (--dataset; docs/DATASETS.md):
  vggsound      --index vggsound.csv (no header: YouTube id, start second, label, split);
                10-s clips; classes: the sorted labels of the whole index
  audioset      --index <split>_segments.csv ... --index class_labels_indices.csv;
                multi-label ("a;b"), classes in class_labels_indices.csv order
  avsbench-s4   --index s4_meta_data.csv, --media s4_data/ (visual_frames/, audio_wav/,
                gt_masks/ per split and category); masks become <key>.fNN.mask.png
  vggss         --index vggss.json; boxes become the centre frame's mask
  flickr        --index Annotations/ [--index flickr_test.csv], --media with frames/ and
                audio/; the annotators' consensus (0 / 0.5 / 1) becomes a mask (grey 128 = 0.5)
media lookup under --media (any folder), for a clip <id> from <start> to <end> seconds:
  <id>_<start>_<end>.<ext>   pre-cut; seconds (30, 000030, 30.000) or milliseconds (30000)
  <id>_<start>.<ext>         pre-cut, VGGSound's <ytid>_<start:06d>
  <id>.<ext>                 full-length, cut [start, end) by stream time
  --name-pattern replaces these. A clip without media is one errors.jsonl line (stage
  missing) and never fails the build; a build where no listed clip is found stops (exit 2).
"""


def add_dataset_options(p) -> None:
    g = p.add_argument_group("public datasets (instead of INPUTs)")
    g.add_argument(
        "--dataset",
        choices=NAMES,
        help="read the dataset's published index files (--index) and media folder (--media)",
    )
    g.add_argument(
        "--index",
        action="append",
        default=[],
        metavar="FILE",
        help="an index file as published (repeat for several; local or s3://)",
    )
    g.add_argument(
        "--media",
        metavar="ROOT",
        help="folder holding the downloaded clips, searched recursively (local or s3://)",
    )
    g.add_argument(
        "--split",
        default=None,
        metavar="S",
        help="build only the clips of this split (vggsound: train | test; avsbench-s4: "
        "train | val | test; audioset: the segment file's name, e.g. balanced_train); "
        "default: all listed clips, each sample's json naming its split",
    )
    g.add_argument(
        "--name-pattern",
        default=None,
        metavar="P",
        help="media file name without extension, replacing the built-in conventions: a "
        "Python format string with {id} {start} {end} {start_ms} {end_ms} {label} {split}, "
        "relative to ROOT when it holds a '/' (e.g. '{id}_{start:06d}', 'clips/{id:.2}/{id}'); "
        "with a time field it names pre-cut clips, without one full-length videos",
    )


def dataset_spec(args: argparse.Namespace):
    """The ``--dataset`` spec, or None for INPUTs; ``AvfusionError`` for a wrong mix."""
    extras = [
        f
        for f, v in (
            ("--index", args.index),
            ("--media", args.media),
            ("--split", args.split),
            ("--name-pattern", args.name_pattern),
        )
        if v
    ]
    if args.dataset is None:
        if extras or not args.inputs:
            raise AvfusionError(
                f"{extras[0]} needs --dataset" if extras else "expected INPUTs or --dataset"
            )
        return None
    if args.inputs:
        raise AvfusionError(f"--dataset {args.dataset}: expected no INPUTs (got {args.inputs[0]})")
    if not args.index or not args.media:
        raise AvfusionError(f"--dataset {args.dataset}: expected --index FILE and --media ROOT")
    from preprocess.datasets.sources import DatasetSpec  # index readers: only when building

    return DatasetSpec(args.dataset, tuple(args.index), args.media, args.split, args.name_pattern)
