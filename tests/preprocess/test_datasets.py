"""Public dataset indexes as published → clip entries, problems with file and line, the media
lookup conventions, boxes → masks, and the separation pair list (no media decoded here;
builds are in test_datasets_build.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avbase.errors import AvfusionError
from preprocess.datasets import audioset, avsbench, flickr, vggsound, vggss
from preprocess.datasets.index import Entry
from preprocess.datasets.media import MediaRoot
from preprocess.datasets.pairs import read_pairs
from preprocess.datasets.records import Regions
from preprocess.datasets.regions import region_mask


def _write(path, text: str):
    path.write_text(text)
    return str(path)


def test_vggsound_classes_are_the_sorted_labels_of_every_split_and_bad_lines_are_named(tmp_path):
    index = _write(
        tmp_path / "vggsound.csv",
        "---g-f_I2yQ,1,people marching,test\n"
        '--0PQM4-hqg,30,"bird chirping, tweeting",train\n'
        "\n"
        "--0PQM4-hqg,30,dog barking,train\n"  # the same clip again
        "-x_AbCdEfGh,abc,dog barking,train\n"
        "-y_AbCdEfGh,5,apple,train,extra\n",
    )
    got = vggsound.read([index])
    assert got.classes == ["bird chirping, tweeting", "dog barking", "people marching"]
    assert [(e.id, e.name, e.label, e.split, e.start, e.end) for e in got.entries] == [
        ("---g-f_I2yQ_000001", "---g-f_I2yQ", "people marching", "test", 1.0, 11.0),
        ("--0PQM4-hqg_000030", "--0PQM4-hqg", "bird chirping, tweeting", "train", 30.0, 40.0),
    ]
    problems = {p.where: (p.id, p.split, p.message) for p in got.problems}
    assert set(problems) == {f"{index}:4", f"{index}:5", f"{index}:6"}
    assert problems[f"{index}:4"][:2] == ("--0PQM4-hqg_000030", "train")
    assert f"first at {index}:2" in problems[f"{index}:4"][2]
    assert "'abc'" in problems[f"{index}:5"][2] and "got 5" in problems[f"{index}:6"][2]


def test_audioset_keeps_the_class_map_order_and_rejects_unknown_mids_and_bad_times(tmp_path):
    classes = _write(
        tmp_path / "class_labels_indices.csv",
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n'
        '2,/m/0jbk,"Animal"\n',
    )
    segments = _write(
        tmp_path / "eval_segments.csv",
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--4gqARaEJE, 0.000, 10.000, "/m/0jbk,/m/09x0r"\n'
        '-0RWZT-miFs, 420.500, 430.500, "/m/05zppz"\n'
        '-1pRmoJIGQc, 11.000, 21.000, "/m/09x0r,/m/0xxxx"\n'
        '-2aBcDeFgHi, 30.000, 20.000, "/m/09x0r"\n',
    )
    got = audioset.read([segments, classes])
    assert got.classes == ["Speech", "Male speech, man speaking", "Animal"] and got.multi_label
    assert got.record == {"class_ids": ["/m/09x0r", "/m/05zppz", "/m/0jbk"]}
    assert [(e.id, e.label, e.split, e.start, e.end) for e in got.entries] == [
        ("--4gqARaEJE_000000", "Animal;Speech", "eval", 0.0, 10.0),
        ("-0RWZT-miFs_420p5", "Male speech, man speaking", "eval", 420.5, 430.5),
    ]
    problems = {p.where: p.message for p in got.problems}
    assert "'/m/0xxxx'" in problems[f"{segments}:6"]
    assert "bad segment time" in problems[f"{segments}:7"] and len(problems) == 2
    with pytest.raises(AvfusionError, match="class_labels_indices.csv"):
        audioset.read([segments])


def test_avsbench_reads_the_named_columns_and_names_a_wrong_header(tmp_path):
    meta = _write(
        tmp_path / "s4_meta_data.csv",
        "name,start,category,split\n-0UCKzcTRyk_1,0,dog_barking,train\n"
        "aB_1,2,cat_meowing,test\n,0,cat_meowing,val\n",
    )
    got = avsbench.read([meta])
    assert got.classes == ["cat_meowing", "dog_barking"]
    assert [(e.id, e.label, e.split) for e in got.entries] == [
        ("-0UCKzcTRyk_1", "dog_barking", "train"),
        ("aB_1", "cat_meowing", "test"),
    ]
    assert [p.where for p in got.problems] == [f"{meta}:4"]
    entry = got.entries[1]
    assert avsbench.frame_paths(entry)[4] == (
        4 + 15 / 16,
        "visual_frames/test/cat_meowing/aB_1/aB_1_5.png",
    )
    assert avsbench.mask_folder(entry) == "gt_masks/test/cat_meowing/aB_1"
    bad = _write(tmp_path / "other.csv", "vid,category\nx,y\n")
    with pytest.raises(AvfusionError, match="name, category, split"):
        avsbench.read([bad])


def test_vggss_entries_keep_their_line_and_reject_boxes_outside_the_frame(tmp_path):
    entries = [
        {"file": "zpWuikVorYg_000032", "class": "elk bugling", "bbox": [[0.4, 0.25, 0.6, 0.75]]},
        {
            "file": "-Ab_x_000000",
            "class": "tap dancing",
            "bbox": [[0, 0, 0.5, 1.0000000001], [0.2, 1.0, 0.7, 1.0]],
        },
        {"file": "Bb_000010", "class": "tap dancing", "bbox": [[0.1, -0.2, 0.5, 0.5]]},
        {"file": "Cc_000010", "class": "tap dancing", "bbox": [[0.6, 0.1, 0.5, 0.5]]},
        {  # as 12 published entries: one corrupt coordinate, the other box is kept
            "file": "Db6Hjt0x28k_000056",
            "class": "playing timbales",
            "bbox": [
                [0.384375, 0.859375, 0.696875, -2.8823037615171176e16],
                [0.05, 0.35, 0.75, 0.98],
            ],
        },
    ]
    index = _write(tmp_path / "vggss.json", json.dumps(entries, indent=1))
    got = vggss.read([index])
    assert got.classes == ["elk bugling", "playing timbales", "tap dancing"]
    first, second, third = got.entries
    assert third.id == "Db6Hjt0x28k_000056" and third.regions.boxes == ((0.05, 0.35, 0.75, 0.98),)
    assert (first.id, first.name, first.start, first.end, first.split) == (
        "zpWuikVorYg_000032",
        "zpWuikVorYg",
        32.0,
        42.0,
        "test",
    )
    assert first.regions == Regions(((0.4, 0.25, 0.6, 0.75),), 1.0, consensus=False)
    assert second.name == "-Ab_x" and second.regions.boxes[0] == (0.0, 0.0, 0.5, 1.0)
    text = open(index).read().splitlines()
    starts = [n + 1 for n, line in enumerate(text) if line == " {"]  # indent=1: one per entry
    assert [(p.where, p.id, p.message.split(":")[0]) for p in got.problems] == [
        (f"{index}:{starts[2]} entry 3", "Bb_000010", "box 1 [0.1, -0.2, 0.5, 0.5]"),
        (f"{index}:{starts[3]} entry 4", "Cc_000010", "box 1 [0.6, 0.1, 0.5, 0.5]"),
        (
            f"{index}:{starts[4]} entry 5",
            "Db6Hjt0x28k_000056",
            "box 1 [0.384375, 0.859375, 0.696875, -2.8823037615171176e+16]",
        ),
    ]
    assert "outside the frame" in got.problems[0].message and "not built" in got.problems[0].message
    assert "max below min" in got.problems[1].message
    assert (
        "outside the frame" in got.problems[2].message
        and "1 box(es) kept" in got.problems[2].message
    )


def test_flickr_reads_every_annotators_box_and_names_the_bad_box(tmp_path):
    notes = tmp_path / "Annotations"
    notes.mkdir()
    box = (
        "<bbox><annotator>{}</annotator><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax>"
        "<ymax>{}</ymax></bbox>"
    )
    (notes / "111.xml").write_text(
        "<annotation>\n<object>\n"
        + box.format(1, 0, 0, 128, 128)
        + "\n</object>\n<object>\n"
        + box.format(2, 64, 64, 192, 192)
        + "\n</object>\n</annotation>\n"
    )
    (notes / "222.xml").write_text(
        "<annotation>\n<object>\n"
        + box.format(1, 0, 0, 10, 10)
        + "\n</object>\n<object>\n"
        + box.format(2, 0, 0, 300, 10)
        + "\n</object>\n</annotation>\n"
    )
    got = flickr.read([str(notes)])
    assert [(e.id, e.regions) for e in got.entries] == [
        ("111", Regions(((0, 0, 128, 128), (64, 64, 192, 192)), 256.0, consensus=True)),
        ("222", Regions(((0, 0, 10, 10),), 256.0, consensus=True)),  # the bad box dropped
    ]
    assert [(p.where, p.id) for p in got.problems] == [(f"{notes}/222.xml:6", "222")]
    assert "bbox 2 [0.0, 0.0, 300.0, 10.0]: outside the frame" in got.problems[0].message
    listed = _write(tmp_path / "flickr_test.csv", "111,202\n333,0\n")
    got = flickr.read([str(notes), listed])
    assert [e.id for e in got.entries] == ["111"]  # 222 is not listed
    assert [(p.where, p.id) for p in got.problems] == [(f"{listed}:2", "333")]


def test_region_masks_follow_the_union_and_the_annotators_consensus():
    boxes = ((0, 0, 128, 128), (64, 64, 192, 192), (0, 0, 64, 64))
    soft = region_mask(Regions(boxes, 256.0, consensus=True), (64, 32))  # 4 x 8 px per grid cell
    # hand-worked on the 64 x 32 frame: x pixels = grid x / 4, y pixels = grid y / 8
    assert soft[0, 0] == 1.0  # boxes 1 and 3
    assert soft[12, 24] == 1.0  # boxes 1 and 2 (grid 96, 96)
    assert soft[4, 20] == 0.5  # box 1 only (grid 80, 32)
    assert soft[20, 40] == 0.5  # box 2 only (grid 160, 160)
    assert soft[30, 60] == 0.0 and soft[16, 0] == 0.0
    assert set(np.unique(soft)) == {0.0, 0.5, 1.0}
    binary = region_mask(Regions(((0.5, 0.5, 1.0, 1.0), (0.0, 0.0, 0.25, 0.25)), 1.0), (8, 4))
    want = np.zeros((4, 8), np.float32)
    want[2:4, 4:8] = 1
    want[0:1, 0:2] = 1
    assert np.array_equal(binary, want)


def test_media_lookup_follows_the_naming_conventions(tmp_path):
    names = [
        "a/--aB_cDe-fG_000030_000040.mp4",  # zero-padded seconds, in a class folder
        "B_b12-45_7x_30000_40000.mp4",  # milliseconds
        "Cc_000_3_4x_1.5_11.5.webm",  # seconds with decimals
        "-Dd4567890__000012.mkv",  # <id>_<start:06d>
        "Ee_34567890.mp4",  # full length
        "Ee_34567890_000001_000011.mp4",  # ... and a pre-cut clip of it, preferred
        "notes.txt",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    media = MediaRoot(str(tmp_path))

    def found(name, start, end):
        hit = media.find(Entry("x", "f:1", name, start=start, end=end))
        return hit and (hit.path[len(str(tmp_path)) + 1 :], hit.precut)

    assert found("--aB_cDe-fG", 30, 40) == (names[0], True)
    assert found("B_b12-45_7x", 30, 40) == (names[1], True)
    assert found("Cc_000_3_4x", 1.5, 11.5) == (names[2], True)
    assert found("-Dd4567890_", 12, 22) == (names[3], True)
    assert found("Ee_34567890", 5, 15) == (names[4], False)
    assert found("Ee_34567890", 1, 11) == (names[5], True)
    assert found("Ee_34567890", None, None) == (names[4], False)
    assert found("B_b12-45_7x", 31, 41) is None and found("Ff", 0, 10) is None
    pattern = MediaRoot(str(tmp_path), "a/{id}_{start:06d}_{end:06d}")
    hit = pattern.find(Entry("x", "f:1", "--aB_cDe-fG", start=30, end=40))
    assert hit.path.endswith(names[0]) and hit.precut
    full = MediaRoot(str(tmp_path), "{id:.2}_34567890")
    assert full.find(Entry("x", "f:1", "Ee_3", start=0, end=10)).precut is False
    with pytest.raises(AvfusionError, match="--name-pattern"):
        MediaRoot(str(tmp_path), "{ytid}").find(Entry("x", "f:1", "Ee", start=0, end=10))


def test_the_release_pair_list_becomes_sample_keys(tmp_path):
    pairs = _write(
        tmp_path / "vggmusic_eval_ss.csv",
        "source_1,source_2,class_1,class_2,sep_type\n"
        'P5tsRM1iokA_000030,-Y-UegG9tLw_000282,"steel_guitar,_slide_guitar",cornet,Easy\n'
        'PaZ4aVEsPsE_000019,sH9j4mHGGkQ_000120,"violin,_fiddle","violin,_fiddle",Hard\n',
    )
    got = read_pairs(pairs)
    assert [(p.first, p.second, p.classes, p.kind) for p in got] == [
        (
            "P5tsRM1iokA_000030_0",
            "-Y-UegG9tLw_000282_0",
            ("steel_guitar,_slide_guitar", "cornet"),
            "Easy",
        ),
        (
            "PaZ4aVEsPsE_000019_0",
            "sH9j4mHGGkQ_000120_0",
            ("violin,_fiddle", "violin,_fiddle"),
            "Hard",
        ),
    ]
    assert read_pairs(pairs, clip_index=2)[0].first == "P5tsRM1iokA_000030_2"
    bad = _write(tmp_path / "bad.csv", "source_1,source_2,class_1,class_2,sep_type\na_000001,b\n")
    with pytest.raises(AvfusionError, match=f"{bad}:2"):
        read_pairs(bad)
    with pytest.raises(AvfusionError, match="expected the header"):
        read_pairs(_write(tmp_path / "h.csv", "a,b\n"))


def test_masks_read_as_0_half_1_and_other_grey_levels_are_refused():
    import io

    import pytest
    from PIL import Image

    from avbase.members import MEMBERS, MemberError, mask_png, read_mask

    soft = np.array([[1.0, 0.5, 0.5, 0.0]], np.float32)
    png = mask_png(soft)
    assert np.unique(np.array(Image.open(io.BytesIO(png)))).tolist() == [0, 128, 255]
    assert np.array_equal(read_mask(png), soft)
    odd = io.BytesIO()
    Image.fromarray(np.array([[0, 100, 255]], np.uint8), mode="L").save(odd, format="PNG")
    with pytest.raises(MemberError, match=r"f00.mask.png: grey levels \[100\]"):
        MEMBERS["mask"].read(odd.getvalue(), "f00.mask.png")
