"""Labelled sets through the real CLI: a fixed class list (--classes), multi-label inputs,
manifest class counts, verify, and the one-line error for a class outside the list."""

from __future__ import annotations

import json

import pytest

from preprocess.synth import synth

from .conftest import cli, cli_error, load_set

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("labelled")
    synth(str(out), videos=4, seconds=2.0, classes=2, seed=3, workers=2)
    return out


def test_class_file_fixes_the_index_and_multi_labels_are_lists(corpus, tmp_path):
    (tmp_path / "classes.txt").write_text("name\ncat\nbird\ndog\n")
    labels = ["bird;cat", "dog", "cat", "dog ; bird"]
    rows = "".join(f"{corpus / f'{i:05d}.mp4'},{lab}\n" for i, lab in enumerate(labels))
    (tmp_path / "list.csv").write_text("path,label\n" + rows)
    cli(
        "shards",
        "build",
        tmp_path / "list.csv",
        "--out",
        tmp_path / "set",
        "--workers",
        "2",
        "--classes",
        tmp_path / "classes.txt",
    )
    manifest, errors, samples = load_set(tmp_path / "set")
    assert not errors and manifest["labels"] == ["cat", "bird", "dog"]  # the file's order
    assert manifest["multi_label"] is True and manifest["labelled_inputs"] == 4
    assert manifest["label_counts"] == [2, 2, 2]
    got = sorted(
        (json.loads(s["json"])["label"], json.loads(s["json"])["label_index"])
        for s in samples.values()
    )
    assert got == [("bird;cat", [0, 1]), ("cat", [0]), ("dog", [2]), ("dog ; bird", [1, 2])]
    cli("shards", "verify", tmp_path / "set")


def test_a_label_outside_the_class_list_is_one_line(corpus, tmp_path, capsys):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "list.csv").write_text(
        f"path,label\n{corpus / '00000.mp4'},cat\n{corpus / '00001.mp4'},cow\n"
    )
    line = cli_error(
        capsys,
        "shards",
        "build",
        tmp_path / "list.csv",
        "--out",
        tmp_path / "set",
        "--classes",
        tmp_path / "classes.txt",
    )
    assert (
        line
        == f"error: {corpus / '00001.mp4'}: class 'cow' is not in the class list (2 classes: cat, dog)"
    )
