"""Clip layout and input discovery (pure functions; no media decoding)."""

from __future__ import annotations

import math

import pytest

from avbase.errors import AvfusionError
from preprocess.clips import clip_spans, frame_offsets, frame_targets
from preprocess.inputs import Source, collect_sources, label_names, select_part, source_id


@pytest.mark.parametrize(
    "overlap", [2.0, 2.38, 5.28, 9.99, 10.0, 11.2, 12.07, 19.9, 20.0, 30.0, 61.7]
)
def test_clip_count_follows_media_readme_formula(overlap):
    spans = clip_spans(0.7, 0.7 + overlap, 10.0, 2.0)
    expected = math.floor(overlap / 10) + (overlap % 10 >= 2)
    assert len(spans) == expected
    assert all(d == 10.0 for _, d in spans[:-1]) and spans[-1][1] == pytest.approx(
        min(10.0, overlap - 10 * (expected - 1))
    )
    assert [s for s, _ in spans] == pytest.approx([0.7 + 10 * k for k in range(expected)])


def test_short_overlap_gives_no_clip():
    assert clip_spans(0.0, 1.99, 10.0, 2.0) == []


def test_frame_offsets_are_centres_inside_the_clip():
    assert frame_offsets(10.0, 1.0) == [i + 0.5 for i in range(10)]
    assert frame_offsets(2.3, 1.0) == [0.5, 1.5]
    assert frame_offsets(1.0, 2.0) == [0.25, 0.75]


def test_targets_of_a_shorter_final_span_are_a_prefix():
    long = frame_targets(0.0, 30.0, 10.0, 2.0, 1.0)
    short = frame_targets(0.0, 24.2, 10.0, 2.0, 1.0)
    assert [t[3] for t in short] == [t[3] for t in long][: len(short)]
    assert len(short) == 10 + 10 + 4


def test_collect_sources_scans_lists_and_dirs(tmp_path):
    (tmp_path / "videos" / "sub").mkdir(parents=True)
    for name in ("b.mp4", "a.webm", "sub/c.avi", ".hidden.mp4", "notes.txt"):
        (tmp_path / "videos" / name).write_bytes(b"x")
    (tmp_path / "list.csv").write_text("path,label\nvideos/a.webm,cat\nvideos/b.mp4,dog\n")
    sources = collect_sources([str(tmp_path / "videos"), str(tmp_path / "list.csv")])
    assert [(s.path[len(str(tmp_path)) + 1 :], s.label) for s in sources] == [
        ("videos/a.webm", "cat"),
        ("videos/b.mp4", "dog"),
        ("videos/sub/c.avi", None),
    ]
    assert label_names(sources) == ["cat", "dog"]


def test_conflicting_labels_and_bad_lists_are_one_line_errors(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "one.csv").write_text("path,label\na.mp4,cat\n")
    (tmp_path / "two.csv").write_text("path,label\na.mp4,dog\n")
    (tmp_path / "bad.csv").write_text("file,label\na.mp4,cat\n")
    with pytest.raises(AvfusionError, match="two labels"):
        collect_sources([str(tmp_path / "one.csv"), str(tmp_path / "two.csv")])
    with pytest.raises(AvfusionError, match="'path' column"):
        collect_sources([str(tmp_path / "bad.csv")])


def test_parts_partition_the_sorted_inputs():
    sources = [Source(f"v{i:03d}.mp4") for i in range(23)]
    parts = [select_part(sources, k, 4) for k in range(4)]
    assert sum(parts, []) == sources
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_source_ids_are_unique_and_dot_free():
    ids = {source_id(p) for p in ("a/x.mp4", "b/x.mp4", "s3://bkt/a/x.mp4", "x.tar.gz.mp4")}
    assert len(ids) == 4 and not any("." in i or "_" in i for i in ids)


def test_symlinked_folders_are_followed_once_and_loops_reported(tmp_path, caplog):
    videos, outside = tmp_path / "videos", tmp_path / "outside"
    (videos / "sub").mkdir(parents=True)
    outside.mkdir()
    (videos / "a.mp4").write_bytes(b"x")
    (outside / "b.mp4").write_bytes(b"x")
    (videos / "linked").symlink_to(outside, target_is_directory=True)
    (videos / "twin").symlink_to(outside, target_is_directory=True)  # a second link: skipped
    (videos / "sub" / "loop").symlink_to(videos, target_is_directory=True)
    with caplog.at_level("WARNING", logger="preprocess.inputs"):
        sources = collect_sources([str(videos)])
    assert [s.path[len(str(videos)) + 1 :] for s in sources] == ["a.mp4", "linked/b.mp4"]
    skipped = sorted(r.getMessage().split(":")[0] for r in caplog.records)
    assert skipped == [str(videos / "sub" / "loop"), str(videos / "twin")], caplog.text
    assert "symlinked folder skipped" in caplog.text
