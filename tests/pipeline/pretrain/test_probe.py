"""kNN probe arithmetic (REFERENCE.md §7.4): second-best neighbour, "all" = summed similarities."""

import torch

from pipeline.pretrain.probe import knn_top1, merge_features


def _feats(image, audio, fusion, labels, keys=None):
    n = len(labels)
    return {
        "image": torch.tensor(image, dtype=torch.float32),
        "audio": torch.tensor(audio, dtype=torch.float32),
        "fusion": torch.tensor(fusion, dtype=torch.float32),
        "labels": torch.tensor(labels),
        "keys": keys or [f"k{i}" for i in range(n)],
    }


def test_knn_second_neighbour_rule():
    # image separates the classes, audio is anti-correlated with them, fusion is uninformative
    image = [[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]
    audio = [[1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]]
    fusion = [[1, 1]] * 4
    acc = knn_top1(_feats(image, audio, fusion, [0, 0, 1, 1]))
    assert acc["image"] == 100.0
    assert acc["audio"] == 0.0
    # "all" sums the similarity matrices: constant audio/fusion leave the image ranking intact
    acc = knn_top1(_feats(image, fusion, fusion, [0, 0, 1, 1]))
    assert acc["all"] == 100.0 and acc["audio"] == acc["fusion"]
    # ... and an anti-correlated audio similarity can flip it
    acc = knn_top1(_feats(image, [[1, 0], [0, 1], [1, 0], [0, 1]], fusion, [0, 0, 1, 1]))
    assert acc["all"] < 100.0


def test_merge_drops_padding_duplicates():
    a = _feats([[1, 0], [0, 1]], [[1, 0], [0, 1]], [[1, 0], [0, 1]], [0, 1], ["x", "y"])
    b = _feats(
        [[0, 1], [1, 0]], [[0, 1], [1, 0]], [[0, 1], [1, 0]], [1, 0], ["z", "x"]
    )  # "x" repeated
    merged = merge_features([a, b])
    assert merged["keys"] == ["x", "y", "z"]
    assert merged["labels"].tolist() == [0, 1, 1]
    assert merged["image"].shape == (3, 2)


def test_unknown_weights_name_the_preset_flag(tmp_path, capsys):
    from safetensors.torch import save_file

    from pipeline.cli import main

    save_file({"stray.weight": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    assert main(["probe", str(tmp_path / "w.safetensors"), "--shards", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "matches no model preset; pass --preset NAME" in err[0], err
    assert "preset=" not in err[0]
