"""``avfusion shards build --dataset`` on look-alike trees of the public datasets
(tests/support/lookalike.py): labels and class order, splits, segment times, masks from mask
folders, boxes and consensus maps, missing clips and bad index lines reported, never fatal."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from avbase.members import read_mask
from tests.support.lookalike import (
    audioset_tree,
    avsbench_tree,
    flickr_tree,
    synth_videos,
    vggsound_tree,
    vggss_tree,
)

from .conftest import cli, cli_error, load_set, meta

pytestmark = pytest.mark.slow

SIZE = 64  # --frame-size: short side of the stored frames
BUILD = ("--workers", "1", "--frame-size", str(SIZE), "--samples-per-shard", "3")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Five 4-s synthetic videos (10 fps, sound and truth masks)."""
    return synth_videos(tmp_path_factory.mktemp("videos"), 5, 4.0, seed=5)


def _build(out, *args) -> tuple[dict, list[dict], dict]:
    cli("shards", "build", *args, "--out", out, *BUILD)
    return load_set(out)


def _index(tree) -> list[str]:
    return [arg for path in tree.index for arg in ("--index", path)]


def _frame(sample: dict, i: int) -> Image.Image:
    return Image.open(io.BytesIO(sample[f"f{i:02d}.jpg"]))


def test_vggsound_splits_share_one_class_list_and_bad_lines_are_named(videos, tmp_path):
    tree = vggsound_tree(tmp_path / "vgg", videos)
    args = ("--dataset", "vggsound", *_index(tree), "--media", tree.media)
    train = _build(tmp_path / "train", *args, "--split", "train")
    test = _build(tmp_path / "test", *args, "--split", "test")
    labels = sorted({c["label"] for c in tree.clips.values()})
    for (manifest, _, samples), split in ((train, "train"), (test, "test")):
        assert manifest["labels"] == labels and manifest["multi_label"] is False
        want = {i for i, c in tree.clips.items() if c["split"] == split and "video" in c}
        assert set(samples) == {f"{i}_0" for i in want}
        for key, sample in samples.items():
            m, clip = meta(sample), tree.clips[key[:-2]]
            assert (m["clip_id"], m["split"], m["label"]) == (key[:-2], split, clip["label"])
            assert m["label_index"] == labels.index(clip["label"])
            assert m["segment"] == [clip["start"], clip["start"] + 10]
    manifest, errors, _ = train
    rejected = {e["source"]: e for e in errors if e["stage"] == "index"}
    assert set(rejected) == set(tree.problems)  # the short line has no split: in both builds
    for where, words in tree.problems.items():
        assert words in rejected[where]["error"]
    assert manifest["dataset"] | {"index": None} == {
        "name": "vggsound",
        "index": None,
        "media": str(tree.media),
        "split": "train",
        "name_pattern": None,
        "excluded": 0,
        "listed": 3,
        "built": 3,
        "missing": 0,
        "broken": 0,
        "index_errors": 3,
        "splits": {"train": 3},
    }
    manifest, errors, _ = test[0], test[1], test[2]
    missing = [e for e in errors if e["stage"] == "missing"]
    assert [(e["source"], e["clip_id"]) for e in missing] == [("Ee345678901_000012",) * 2]
    assert "Ee345678901_12_22" in missing[0]["error"] and manifest["num_failed"] == 2
    counts = {k: manifest["dataset"][k] for k in ("listed", "built", "missing", "index_errors")}
    assert counts == {"listed": 2, "built": 1, "missing": 1, "index_errors": 1}
    cli("shards", "verify", tmp_path / "train")
    (tmp_path / "dogs.txt").write_text("dog barking\n")  # --classes: a subset, in its order
    manifest, _, samples = _build(
        tmp_path / "dogs", *args, "--split", "train", "--classes", tmp_path / "dogs.txt"
    )
    dogs = {i for i, c in tree.clips.items() if c["label"] == "dog barking" and "video" in c}
    assert manifest["labels"] == ["dog barking"] and set(samples) == {f"{i}_0" for i in dogs}
    assert (manifest["dataset"]["excluded"], manifest["dataset"]["listed"]) == (1, 2)


def test_a_clip_cut_from_a_full_length_video_starts_at_its_start_second(videos, tmp_path):
    tree = vggsound_tree(tmp_path / "vgg", videos)
    full = next(i for i, c in tree.clips.items() if c["naming"] == "full")
    _, _, cut = _build(
        tmp_path / "cut",
        "--dataset",
        "vggsound",
        *_index(tree),
        "--media",
        tree.media,
        "--split",
        "train",
    )
    _, _, plain = _build(tmp_path / "plain", tree.clips[full]["video"])  # the whole file
    sample, whole = cut[f"{full}_0"], next(iter(plain.values()))
    m = meta(sample)
    assert abs(m["clip_start"] - 1.0) < 1e-4 and abs(m["clip_seconds"] - 3.0) < 1e-3
    assert m["frame_times"] == [0.5, 1.5, 2.5]  # video time 1.5, 2.5, 3.5
    for i in range(3):  # the same decoded frames as the plain build's at 1.5, 2.5, 3.5 s
        assert sample[f"f{i:02d}.jpg"] == whole[f"f{i + 1:02d}.jpg"]
    mel_cut = np.load(io.BytesIO(sample["mel.npy"])).astype(np.float32)
    mel_all = np.load(io.BytesIO(whole["mel.npy"])).astype(np.float32)
    inner = mel_cut[:, 8:-8]  # away from the cut's edges (STFT padding, resampling)
    assert np.abs(inner - mel_all[:, 64 + 8 : 64 + 8 + inner.shape[1]]).max() < 0.05


def test_audioset_is_multi_label_in_the_class_map_order(videos, tmp_path):
    tree = audioset_tree(tmp_path / "as", videos)
    args = ("--dataset", "audioset", *_index(tree), "--media", tree.media)
    manifest, errors, samples = _build(tmp_path / "bal", *args, "--split", "balanced_train")
    names = ["Speech", "Male speech, man speaking", "Animal", "Bird"]
    assert manifest["labels"] == names and manifest["multi_label"] is True
    assert manifest["dataset"]["class_ids"] == ["/m/09x0r", "/m/05zppz", "/m/0jbk", "/m/015p6"]
    built = {i for i, c in tree.clips.items() if c["split"] == "balanced_train" and "video" in c}
    assert set(samples) == {f"{i}_0" for i in built}
    for key, sample in samples.items():
        m, clip = meta(sample), tree.clips[key[:-2]]
        assert m["label"] == ";".join(clip["labels"])
        assert m["label_index"] == sorted(names.index(n) for n in clip["labels"])
        if clip["full"]:  # cut 1.5-3.5 s from the full-length video
            assert abs(m["clip_start"] - 1.5) < 1e-4 and abs(m["clip_seconds"] - 2.0) < 1e-3
    rejected = {e["source"]: e["error"] for e in errors if e["stage"] == "index"}
    assert set(rejected) == set(tree.problems)
    for at, words in tree.problems.items():
        assert words in rejected[at]
    assert [e["clip_id"] for e in errors if e["stage"] == "missing"] == ["Xx_missing1_000000"]
    assert manifest["label_counts"] == [1, 1, 2, 1]
    _, _, evaluation = _build(tmp_path / "eval", *args, "--split", "eval")
    assert set(evaluation) == {"Ww_eval_123_000000_0"}  # named in milliseconds


def test_avsbench_masks_sit_on_their_pictures_first_only_in_train(tmp_path_factory, tmp_path):
    videos = synth_videos(tmp_path_factory.mktemp("avs-videos"), 2, 5.0, seed=2)
    tree = avsbench_tree(tmp_path / "avs", videos)
    args = ("--dataset", "avsbench-s4", *_index(tree), "--media", tree.media)
    for split, masked in (("train", [0]), ("val", [0, 1, 2, 3, 4])):
        manifest, errors, samples = _build(tmp_path / split, *args, "--split", split)
        assert manifest["labels"] == ["cat_meowing", "dog_barking"]
        assert manifest["members"] == ["mask"]
        names = [n for n, c in tree.clips.items() if c["split"] == split and "video" in c]
        assert set(samples) == {f"{n}_0" for n in names}
        for name in names:
            sample, folder = samples[f"{name}_0"], tree.clips[name]["label"]
            m = meta(sample)
            assert m["label"] == folder and m["frame_times"] == [k + 15 / 16 for k in range(5)]
            assert sorted(n for n in sample if n.endswith(".mask.png")) == [
                f"f{i:02d}.mask.png" for i in masked
            ]
            base = tree.media / "gt_masks" / split / folder / name
            for i in masked:
                truth = Image.open(base / f"{name}_{i + 1}.png").resize(
                    _frame(sample, i).size, Image.Resampling.NEAREST
                )
                assert np.array_equal(
                    read_mask(sample[f"f{i:02d}.mask.png"]), np.array(truth) > 127
                )
            picture = Image.open(
                tree.media / "visual_frames" / split / folder / name / f"{name}_3.png"
            )
            stored = np.asarray(_frame(sample, 2), np.float32)
            assert np.abs(np.asarray(picture.resize((SIZE, SIZE)), np.float32) - stored).mean() < 6
        missing = [e for e in errors if e["stage"] == "missing"]
        assert [e["clip_id"] for e in missing] == (["nomedia_0001"] if split == "val" else [])
    cli("shards", "verify", tmp_path / "val")


def test_vggss_boxes_become_the_mask_of_the_centre_frame(videos, tmp_path):
    tree = vggss_tree(tmp_path / "vggss", videos[:3])
    manifest, errors, samples = _build(
        tmp_path / "set", "--dataset", "vggss", *_index(tree), "--media", tree.media
    )
    assert manifest["members"] == ["mask"] and len(samples) == 3
    for key, sample in samples.items():
        m, clip = meta(sample), tree.clips[key[:-2]]
        assert m["split"] == "test" and m["label"] == clip["label"]
        masks = [n for n in sample if n.endswith(".mask.png")]
        centre = m["clip_seconds"] / 2  # 2 s: frames at 1.5 and 2.5 s, the earlier one wins
        nearest = min(range(m["n_frames"]), key=lambda i: (abs(m["frame_times"][i] - centre), i))
        assert masks == [f"f{nearest:02d}.mask.png"]
        w, h = _frame(sample, nearest).size
        x0, y0, x1, y1 = clip["boxes"][0]
        want = np.zeros((h, w), np.float32)
        want[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = 1
        assert np.array_equal(read_mask(sample[masks[0]]), want)
    rejected = {e["source"]: e["error"] for e in errors if e["stage"] == "index"}
    assert set(rejected) == set(tree.problems)
    for at, words in tree.problems.items():
        assert "outside the frame" in rejected[at] and words in rejected[at]
    assert [e["clip_id"] for e in errors if e["stage"] == "missing"] == ["Missing0001_000000"]
    cli("shards", "verify", tmp_path / "set")


def test_flickr_consensus_is_stored_with_grey_128_for_half(videos, tmp_path):
    boxes = [[[0, 0, 128, 128], [64, 64, 192, 192], [0, 0, 64, 64]], [[32, 32, 224, 224]]]
    tree = flickr_tree(tmp_path / "flickr", videos[:2], boxes)
    manifest, errors, samples = _build(
        tmp_path / "set", "--dataset", "flickr", *_index(tree), "--media", tree.media
    )
    assert manifest["labels"] == [] and manifest["members"] == ["mask"] and len(samples) == 2
    first = samples[f"{next(iter(tree.clips))}_0"]
    m = meta(first)
    assert m["n_frames"] == 1 and abs(m["frame_times"][0] + m["clip_start"] - 2.02) < 0.05
    grey = np.array(Image.open(io.BytesIO(first["f00.mask.png"])))
    assert grey.shape == (SIZE, SIZE)  # the 256 x 256 picture: 4 grid units per pixel
    # hand-worked: boxes 1+3 and 1+2 overlap -> 255; one box -> 128; none -> 0
    assert (grey[2, 2], grey[20, 20], grey[2, 20], grey[40, 40], grey[60, 60]) == (
        255,
        255,
        128,
        128,
        0,
    )
    assert set(np.unique(read_mask(first["f00.mask.png"]))) == {0.0, 0.5, 1.0}
    assert [(e["source"], e["stage"]) for e in errors] == [(w, "index") for w in tree.problems]
    cli("shards", "verify", tmp_path / "set")

    from pipeline.data.dense import DenseSpec
    from tests.support.dense import dense_rows

    rows = [row for _, row in dense_rows(tmp_path / "set", DenseSpec(masks=True), size=32)]
    assert len(rows) == 2 and any((row["mask"] == 0.5).any() for row in rows)


def test_a_build_where_no_listed_clip_is_found_stops_before_any_work(videos, tmp_path, capsys):
    tree = vggsound_tree(tmp_path / "vgg", videos)
    (tmp_path / "empty").mkdir()
    line = cli_error(
        capsys,
        "shards",
        "build",
        "--dataset",
        "vggsound",
        *_index(tree),
        "--media",
        tmp_path / "empty",
        "--out",
        tmp_path / "out",
    )
    assert "none of the 5 listed clips was found" in line and "--aB_cDe-fG_0_10.*" in line
    assert not (tmp_path / "out").exists()
    line = cli_error(
        capsys,
        "shards",
        "build",
        "--dataset",
        "vggsound",
        *_index(tree),
        "--media",
        tree.media,
        "--split",
        "val",
        "--out",
        tmp_path / "out",
    )
    assert "split 'val'" in line and "splits: test, train" in line
    line = cli_error(capsys, "shards", "build", videos[0], "--index", "x.csv", "--out", tmp_path)
    assert "--index needs --dataset" in line
    line = cli_error(
        capsys, "shards", "build", "--dataset", "vggss", "--index", "x", "--out", tmp_path
    )
    assert "--media ROOT" in line


def test_parts_merge_into_the_single_builds_samples_in_the_class_map_order(videos, tmp_path):
    tree = audioset_tree(tmp_path / "as", videos)
    args = (
        "--dataset",
        "audioset",
        *_index(tree),
        "--media",
        tree.media,
        "--split",
        "balanced_train",
    )
    single = _build(tmp_path / "single", *args)
    for k in range(2):
        _build(tmp_path / f"part{k}", *args, "--num-parts", "2", "--part-index", str(k))
    cli("shards", "merge", tmp_path / "part0", tmp_path / "part1", "--out", tmp_path / "merged")
    merged = load_set(tmp_path / "merged")
    assert (
        merged[0]["labels"]
        == single[0]["labels"]
        == [n for n in ["Speech", "Male speech, man speaking", "Animal", "Bird"]]
    )
    assert merged[2] == single[2]  # the same samples, byte for byte
    assert merged[0]["dataset"] == single[0]["dataset"]
    assert merged[0]["label_counts"] == single[0]["label_counts"]
    assert sorted(map(json.dumps, merged[1])) == sorted(map(json.dumps, single[1]))
