"""Small look-alike trees of the public datasets, in their published formats, made from
synthetic videos (``preprocess.synth``): the dataset-build tests run without a download.

Each ``*_tree`` function writes the index file(s) exactly as the dataset publishes them
(header or none, ``#`` comment lines, quoting, id and file naming) and a media folder in a
layout users have (docs/DATASETS.md), and returns what it wrote — the expectations of a test
come from here, not from the code under test. Formats and their sources:

- VGGSound ``vggsound.csv`` (hche11/VGGSound README): no header, ``ytid,start,label,split``,
  labels with a comma quoted; media named ``<ytid>_<start:06d>_<end:06d>.mp4`` in class
  folders (DeepAVFusion), ``<ytid>_<start ms>_<end ms>.mp4``, ``<ytid>_<start:06d>.mp4`` and
  full-length ``<ytid>.mp4``.
- AudioSet segment CSVs (research.google.com/audioset): three ``#`` lines, then
  ``YTID, start_seconds, end_seconds, "mid,mid"``; ``class_labels_indices.csv`` with
  ``index,mid,display_name`` and quoted display names.
- AVSBench ``s4_meta_data.csv`` (``name,start,category,split``; OpenNLPLab/AVSBench
  preprocessing scripts) and ``visual_frames/`` (224 × 224 PNGs ``<name>_<k>.png``),
  ``audio_wav/`` (16-kHz WAV), ``gt_masks/`` (train: ``_1.png`` only) per split and category.
- VGG-SS ``vggss.json`` (LVS ``metadata/``): one line, ``{"file", "class", "bbox"}`` entries,
  boxes as fractions.
- Flickr-SoundNet: ``Annotations/<id>.xml`` with every annotator's ``bbox`` (first child
  skipped by the readers, then xmin, ymin, xmax, ymax on a 256 grid), ``frames/<id>.jpg``,
  ``audio/<id>.wav``, ``flickr_test.csv`` (``id,n``, no header). NOTE: the readers ignore
  the ``bbox`` element's first child, whose tag is not known from them; it is written here as
  ``<annotator>``.
"""

from __future__ import annotations

import csv
import json
import shutil
import wave
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image

from preprocess.synth import synth

SOUND_RATE = 16000
AVS_SIZE = 224  # AVSBench's frames and masks
FLICKR_SIZE = 256  # Flickr-SoundNet pictures (and the annotation grid)


@dataclass
class Tree:
    """What a look-alike tree holds: its index files, media folder and per-clip facts."""

    index: list[Path]
    media: Path
    clips: dict[str, dict] = field(default_factory=dict)  # clip id -> facts
    problems: dict[str, str] = field(default_factory=dict)  # "<file>:<line>" -> what is wrong


def synth_videos(folder: Path, videos: int, seconds: float, seed: int = 0) -> list[Path]:
    """``videos`` synthetic clips (2 classes, one sounding shape, per-second truth masks)."""
    synth(str(folder), videos, seconds, 2, seed, 1, masks=True)
    return sorted(folder.glob("*.mp4"))


def truth_mask(video: Path, second: int) -> np.ndarray:
    """bool ``[H, W]``: synth's sounding-shape mask of the frame at ``second + 0.5`` s."""
    name = video.stem
    return np.array(Image.open(video.parent / name / f"{name}_{second + 1}.png")) > 127


def box_of(mask: np.ndarray) -> list[float]:
    """The mask's bounding box as fractions of the frame: [xmin, ymin, xmax, ymax]."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    return [float(cols.min() / w), float(rows.min() / h)] + [
        float((cols.max() + 1) / w),
        float((rows.max() + 1) / h),
    ]


def vggsound_tree(root: Path, videos: list[Path]) -> Tree:
    """Five listed clips (three train, two test; one test clip without media), each media
    naming convention once, plus a repeated line, a bad time and a short line."""
    root.mkdir(parents=True, exist_ok=True)
    media = root / "media"
    rows = [  # ytid, start, label, split, naming
        ("--aB_cDe-fG", 0, "bird chirping, tweeting", "train", "class folder"),
        ("B_b12-45_7x", 30, "dog barking", "train", "ms"),
        ("Cc_000_3_4x", 1, "dog barking", "train", "full"),
        ("-Dd4567890_", 0, "cat meowing", "test", "start"),
        ("Ee345678901", 12, "cat meowing", "test", None),
    ]
    tree = Tree([root / "vggsound.csv"], media)
    lines = [list(r[:4]) for r in rows]
    for (ytid, start, label, split, naming), video in zip(rows, videos, strict=False):
        clip_id = f"{ytid}_{start:06d}"
        tree.clips[clip_id] = {"label": label, "split": split, "start": start, "naming": naming}
        name = {
            "class folder": f"clips/{label.replace(' ', '_').replace(',', '_')}/"
            f"{ytid}_{start:06d}_{start + 10:06d}",
            "ms": f"{ytid}_{start * 1000}_{(start + 10) * 1000}",
            "full": ytid,
            "start": f"{ytid}_{start:06d}",
            None: None,
        }[naming]
        if name is not None:
            _copy(video, media / f"{name}.mp4")
            tree.clips[clip_id]["video"] = video
    lines += [list(rows[0][:4]), ["Ff345678901", "1.5.0", "dog barking", "train"], ["Gg"]]
    _write_csv(tree.index[0], lines)
    tree.problems = {
        f"{tree.index[0]}:6": "listed twice",
        f"{tree.index[0]}:7": "start time",
        f"{tree.index[0]}:8": "expected 4 fields",
    }
    return tree


AUDIOSET_CLASSES = [  # index order, not alphabetical
    ("/m/09x0r", "Speech"),
    ("/m/05zppz", "Male speech, man speaking"),
    ("/m/0jbk", "Animal"),
    ("/m/015p6", "Bird"),
]


def audioset_tree(root: Path, videos: list[Path]) -> Tree:
    """``class_labels_indices.csv``, ``balanced_train_segments.csv`` (three clips with media:
    pre-cut in DeepAVFusion's ``clips/<id[:2]>/`` layout, pre-cut with decimals, a full-length
    video cut at 1.5-3.5 s; one without; an unknown MID and a bad time) and
    ``eval_segments.csv`` (one clip, millisecond naming)."""
    root.mkdir(parents=True, exist_ok=True)
    media = root / "media"
    classes = root / "class_labels_indices.csv"
    classes.write_text(
        "index,mid,display_name\n"
        + "".join(f'{i},{mid},"{name}"\n' for i, (mid, name) in enumerate(AUDIOSET_CLASSES))
    )
    balanced = [  # ytid, start, end, mids, media name
        (
            "--PJHxphWEs",
            "30.000",
            "40.000",
            "/m/09x0r,/m/05zppz",
            "clips/--/--PJHxphWEs_000030_000040",
        ),
        ("-0Ab_cd12ef", "1.500", "3.500", "/m/0jbk", "-0Ab_cd12ef"),
        ("AbCdEfGhIjK", "0.000", "10.000", "/m/015p6,/m/0jbk", "AbCdEfGhIjK_0.000_10.000"),
        ("Xx_missing1", "0.000", "10.000", "/m/09x0r", None),
        ("Zz_unknown1", "0.000", "10.000", "/m/0jbk,/m/0xxxx", None),
        ("Yy_badtime1", "20.000", "10.000", "/m/0jbk", None),
    ]
    evaluation = [("Ww_eval_123", "0.000", "10.000", "/m/015p6", "Ww_eval_123_0_10000")]
    tree = Tree([root / "balanced_train_segments.csv", root / "eval_segments.csv", classes], media)
    names = dict(AUDIOSET_CLASSES)
    pool = iter(videos)
    for path, rows, split in (
        (tree.index[0], balanced, "balanced_train"),
        (tree.index[1], evaluation, "eval"),
    ):
        _write_segments(path, rows)
        for ytid, start, end, mids, name in rows[:4] if split == "balanced_train" else rows:
            # the id of docs/DATASETS.md: <ytid>_<start:06d>, a fraction written with "p"
            whole = float(start).is_integer()
            clip_id = f"{ytid}_{int(float(start)):06d}" if whole else f"{ytid}_{float(start):g}"
            clip_id = clip_id.replace(".", "p")
            labels = [names[m] for m in mids.split(",")]
            tree.clips[clip_id] = {
                "labels": labels,
                "split": split,
                "start": float(start),
                "end": float(end),
                "full": name == ytid,
            }
            if name is not None:
                video = next(pool)
                _copy(video, media / f"{name}.mp4")
                tree.clips[clip_id]["video"] = video
    tree.problems = {
        f"{tree.index[0]}:8": "/m/0xxxx",
        f"{tree.index[0]}:9": "bad segment time",
    }
    return tree


def avsbench_tree(root: Path, videos: list[Path]) -> Tree:
    """``s4_meta_data.csv`` and ``s4_data/`` for ``videos`` (5-s synthetic clips) split as
    train, val, val, train, ...; one more listed val clip has no media. Pictures are the synth
    frames at ``k - 0.5`` s (so synth's truth masks fit them), resized to 224 × 224."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / "s4_data"
    categories = ("dog_barking", "cat_meowing")
    tree = Tree([root / "s4_meta_data.csv"], data)
    lines = [["name", "start", "category", "split"]]
    for i, video in enumerate(videos):
        name, category = f"vid{i}_{'x' * 3}AB{i:02d}", categories[i % 2]
        split = ("train", "val")[i % 2]
        lines.append([name, "0", category, split])
        tree.clips[name] = {"label": category, "split": split, "video": video}
        frames = _frames(video, [k + 0.5 for k in range(5)])
        folder = data / "visual_frames" / split / category / name
        masks = data / "gt_masks" / split / category / name
        folder.mkdir(parents=True)
        masks.mkdir(parents=True)
        for k, frame in enumerate(frames, start=1):
            frame.resize((AVS_SIZE, AVS_SIZE)).save(folder / f"{name}_{k}.png")
            if split != "train" or k == 1:
                truth = Image.fromarray(truth_mask(video, k - 1).astype(np.uint8) * 255)
                truth.resize((AVS_SIZE, AVS_SIZE), Image.Resampling.NEAREST).save(
                    masks / f"{name}_{k}.png"
                )
        _write_wav(data / "audio_wav" / split / category / f"{name}.wav", _sound(video))
    lines.append(["nomedia_0001", "0", categories[0], "val"])
    tree.clips["nomedia_0001"] = {"label": categories[0], "split": "val"}
    _write_csv(tree.index[0], lines)
    return tree


def vggss_tree(root: Path, videos: list[Path]) -> Tree:
    """``vggss.json`` with one entry per video (named ``<id>_<start:06d>.mp4`` as LVS reads
    them, every other one ``<id>_<start ms>_<end ms>.mp4``), the box the synth mask of the
    frame at 1.5 s fills (the first entry also has a box outside the frame); plus an entry
    without media and one whose only box is outside the frame."""
    root.mkdir(parents=True, exist_ok=True)
    media = root / "media"
    entries = []
    tree = Tree([root / "vggss.json"], media)
    for i, video in enumerate(videos):
        ytid, start = f"Vv_{i:02d}-abc{i}", 10 * i
        clip_id = f"{ytid}_{start:06d}"
        box = box_of(truth_mask(video, 1))
        bad = [[0.5, 0.1, 1.2, 0.5]] if i == 0 else []  # dropped, the good box kept
        entries.append({"file": clip_id, "class": f"class {i % 2}", "bbox": [box, *bad]})
        name = clip_id if i % 2 == 0 else f"{ytid}_{start * 1000}_{(start + 10) * 1000}"
        _copy(video, media / f"{name}.mp4")
        tree.clips[clip_id] = {"label": f"class {i % 2}", "boxes": [box], "video": video}
    entries.append({"file": "Missing0001_000000", "class": "class 0", "bbox": [[0, 0, 1, 1]]})
    tree.clips["Missing0001_000000"] = {"label": "class 0", "boxes": [[0, 0, 1, 1]]}
    entries.append(
        {"file": "Outside0001_000000", "class": "class 1", "bbox": [[0.5, 0.1, 1.2, 0.5]]}
    )
    tree.index[0].write_text(json.dumps(entries))
    tree.problems = {
        f"{tree.index[0]}:1 entry 1": "1 box(es) kept",
        f"{tree.index[0]}:1 entry {len(entries)}": "not built",
    }
    return tree


def flickr_tree(root: Path, videos: list[Path], boxes: list[list[list[int]]]) -> Tree:
    """``Annotations/<id>.xml`` (the annotators' ``boxes[i]`` for clip i, on the 256 grid),
    ``frames/<id>.jpg`` (the synth frame at the sound's centre, 256 × 256),
    ``audio/<id>.wav`` and ``flickr_test.csv`` listing the clips, one id without an
    annotation, and not listing an extra annotated clip with a box outside the grid."""
    root.mkdir(parents=True, exist_ok=True)
    media = root / "Flickr-SoundNet"
    notes = media / "Annotations"
    notes.mkdir(parents=True)
    tree = Tree([notes, root / "flickr_test.csv"], media)
    ids = [str(10000130166 + 7 * i) for i in range(len(videos))]
    for clip_id, video, clip_boxes in zip(ids, videos, boxes, strict=True):
        sound = _sound(video)
        centre = len(sound) / SOUND_RATE / 2
        (media / "frames").mkdir(exist_ok=True)
        _frames(video, [centre])[0].resize((FLICKR_SIZE, FLICKR_SIZE)).save(
            media / "frames" / f"{clip_id}.jpg", quality=95
        )
        _write_wav(media / "audio" / f"{clip_id}.wav", sound)
        (notes / f"{clip_id}.xml").write_text(_flickr_xml(clip_id, clip_boxes))
        tree.clips[clip_id] = {"boxes": clip_boxes, "video": video}
    (notes / "9999999999.xml").write_text(_flickr_xml("9999999999", [[0, 0, 300, 100]]))
    listed = [*ids, "12345678901"]
    _write_csv(tree.index[1], [[i, str(n * 101)] for n, i in enumerate(listed)])
    tree.problems = {f"{tree.index[1]}:{len(listed)}": "no annotation file"}
    return tree


def _flickr_xml(clip_id: str, boxes: list[list[int]]) -> str:
    objects = "".join(
        f"  <object>\n    <bbox>\n      <annotator>{k}</annotator>\n"
        + "".join(
            f"      <{t}>{v}</{t}>\n"
            for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True)
        )
        + "    </bbox>\n  </object>\n"
        for k, box in enumerate(boxes, start=1)
    )
    return (
        f"<annotation>\n  <filename>{clip_id}.jpg</filename>\n  <size>\n"
        f"    <width>{FLICKR_SIZE}</width>\n    <height>{FLICKR_SIZE}</height>\n  </size>\n"
        f"{objects}</annotation>\n"
    )


def _frames(video: Path, times: list[float]) -> list[Image.Image]:
    """The decoded frames nearest ``times`` (seconds)."""
    with av.open(str(video)) as container:
        decoded = [(float(f.time), f.to_image()) for f in container.decode(video=0)]
    return [min(decoded, key=lambda tf: abs(tf[0] - t))[1] for t in times]


def _sound(video: Path) -> np.ndarray:
    """The video's sound, mono float32 at 16 kHz."""
    with av.open(str(video)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SOUND_RATE)
        chunks = [
            r.to_ndarray().reshape(-1)
            for frame in container.decode(audio=0)
            for r in resampler.resample(frame)
        ]
        chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
    return np.concatenate(chunks)


def _write_wav(path: Path, sound: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SOUND_RATE)
        w.writeframes((np.clip(sound, -1, 1) * 32767).round().astype("<i2").tobytes())


def _write_csv(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _write_segments(path: Path, rows: list[tuple]) -> None:
    lines = [
        "# Segments csv created Sun Mar  5 10:54:31 2017",
        f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels=4, "
        f"num_positive_labels={sum(len(r[3].split(',')) for r in rows)}",
        "# YTID, start_seconds, end_seconds, positive_labels",
        *(f'{ytid}, {start}, {end}, "{mids}"' for ytid, start, end, mids, _ in rows),
    ]
    path.write_text("\n".join(lines) + "\n")


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dest)
