"""``avfusion eval score``: saved predictions scored through the command (in process) agree with
independent transcriptions of the published code; bad files give one ``error:`` line naming the
array; ``avfusion eval --config …`` parses as before."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import build_parser, main

from . import metric_references as ref


def _score(capsys, task: str, path) -> dict:
    assert main(["eval", "score", "--task", task, "--input", str(path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    return json.loads(out[0])


def _avs_arrays(seed: int, n: int = 12, side: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.zeros((n, side, side), dtype=np.uint8)
    for i in range(n):
        if i % 5 != 4:  # the last frame of each 5-frame video has no object
            r, c = rng.integers(0, 5, 2)
            truth[i, r : r + 4, c : c + 5] = 1
    truth[1] = 1  # an all-foreground frame …
    logits = (rng.standard_normal((n, side, side)) * 2 + truth * 2 - 1).astype(np.float32)
    logits[1] = 3.0  # … predicted perfectly
    return {"logits": logits, "truth": truth}


def _avs_reference(arrays: dict, video: np.ndarray) -> dict[str, float]:
    prob, truth = ref.sigmoid(arrays["logits"]), arrays["truth"]
    want = ref.release_avs(prob, truth)
    want["miou_avsbench"] = ref.avsbench_miou(prob, truth)
    want["fscore_avsbench"] = ref.avsbench_fscore(prob, truth, video)
    return want


@pytest.mark.parametrize("seed", range(3))
def test_avs_score_agrees_with_the_published_code(tmp_path, capsys, seed):
    arrays = _avs_arrays(seed)
    np.savez(tmp_path / "avs.npz", **arrays)
    got = _score(capsys, "avs", tmp_path / "avs.npz")
    want = _avs_reference(arrays, np.arange(12) // 5)  # no video array: groups of 5 (5, 5, 2)
    assert got["task"] == "avs" and got["frames"] == 12
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-3), key


def test_avs_video_ids_group_frames_wherever_they_are(tmp_path, capsys):
    """Ids 'b', 'a', 'b', … interleaved: the frames of each id form one video (AVSBench F per
    video), which differs from the default groups of 5."""
    arrays = _avs_arrays(7)
    video = np.array(["b", "a"] * 6)
    np.savez(tmp_path / "avs.npz", **arrays, video=video)
    got = _score(capsys, "avs", tmp_path / "avs.npz")
    want = _avs_reference(arrays, video)
    assert got["fscore_avsbench"] == pytest.approx(want["fscore_avsbench"], abs=1e-3)
    assert got["fscore_avsbench"] != pytest.approx(
        _avs_reference(arrays, np.arange(12) // 5)["fscore_avsbench"], abs=1e-3
    )


@pytest.mark.parametrize("seed", range(3))
def test_localization_score_agrees_with_lvs(tmp_path, capsys, seed):
    rng = np.random.default_rng(seed)
    n, side = 30, 14
    heatmaps = rng.standard_normal((n, side, side))
    heatmaps[:, 4:10, 4:10] += 1.5
    heatmaps[:3] = np.round(heatmaps[:3])  # ties at the median (strictly above, as LVS)
    truth = np.zeros((n, side, side))
    for i in range(n):
        r, c = rng.integers(0, 8, 2)
        truth[i, r : r + 6, c : c + 6] = 1.0
        truth[i, r : r + 2, c : c + 6] = 0.5  # annotator consensus
    np.savez(tmp_path / "loc.npz", heatmaps=heatmaps, truth=truth)
    got = _score(capsys, "localization", tmp_path / "loc.npz")
    want = ref.lvs_localization(heatmaps, truth)
    assert got["samples"] == n
    assert got["ciou"] == pytest.approx(want["ciou"], abs=1e-3)
    assert got["auc"] == pytest.approx(want["auc"], abs=1e-3)


def test_separation_score_agrees_with_the_release(tmp_path, capsys):
    rng = np.random.default_rng(0)
    t = np.arange(3000) / 8000
    refs = np.stack(
        [
            np.stack([np.sin(2 * np.pi * f * t), np.sign(np.sin(2 * np.pi * (f / 3) * t))])
            + 0.05 * rng.standard_normal((2, len(t)))
            for f in (300, 520, 770, 910)
        ]
    )
    ests = refs + 0.4 * refs[:, ::-1] + 0.1 * rng.standard_normal(refs.shape)
    refs[2, 0] = 0.0  # a silent reference
    ests[3, 1] = 5e-5  # a silent estimate: Σx² = 3000 · 2.5e-9 = 7.5e-6 < 1e-5
    np.savez(tmp_path / "sep.npz", references=refs, estimates=ests)
    got = _score(capsys, "separation", tmp_path / "sep.npz")
    want = ref.release_separation(refs, ests)
    assert got["pairs"] == 2
    for key in ("sdr", "sir", "sar"):
        assert got[key] == pytest.approx(want[key], abs=1e-3)


@pytest.mark.parametrize(
    "task,arrays,message",
    [
        ("avs", {"logits": np.zeros((2, 4, 4))}, "missing array 'truth'"),
        ("avs", {"truth": np.zeros((2, 4, 4))}, "missing array 'logits'"),
        (
            "avs",
            {"logits": np.zeros((2, 4, 4)), "truth": np.zeros((2, 4, 5))},
            "array 'logits' [2, 4, 4] and array 'truth' [2, 4, 5] must have the same shape",
        ),
        (
            "avs",
            {"logits": np.full((2, 4, 4), np.nan), "truth": np.ones((2, 4, 4))},
            "array 'logits' holds NaN",
        ),
        (
            "avs",
            {"logits": np.zeros((2, 4, 4)), "truth": np.full((2, 4, 4), 0.5)},
            "array 'truth' must hold only 0 and 1",
        ),
        (
            "avs",
            {"logits": np.zeros((2, 4, 4)), "truth": np.ones((2, 4, 4)), "video": np.zeros(3)},
            "array 'video' [3] must be [N] = [2]",
        ),
        (
            "localization",
            {"heatmaps": np.zeros((2, 4, 4)), "truth": np.full((2, 4, 4), 2.0)},
            "array 'truth' must hold values in [0, 1]",
        ),
        (
            "localization",
            {"heatmaps": np.zeros((4, 4)), "truth": np.zeros((4, 4))},
            "must have the same shape [N, H, W]",
        ),
        (
            "separation",
            {"references": np.ones((1, 2, 9)), "estimates": np.array([[[np.inf] * 9] * 2])},
            "array 'estimates' holds NaN or infinite values",
        ),
        ("separation", {"references": np.ones((1, 2, 9))}, "missing array 'estimates'"),
    ],
)
def test_bad_arrays_give_one_error_line_naming_the_array(tmp_path, capsys, task, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    assert main(["eval", "score", "--task", task, "--input", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1, err
    assert err[0].startswith(f"error: {path}: ") and message in err[0], err[0]


def test_missing_and_unreadable_files(tmp_path, capsys):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.save(tmp_path / "one.npy", np.zeros(3))
    for name, message in (
        ("nope.npz", "file not found"),
        ("junk.npz", "not a readable .npz"),
        ("one.npy", "not a .npz archive"),
    ):
        assert main(["eval", "score", "--task", "avs", "--input", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / name}: {message}"), err


def test_eval_forms_parse_as_before_and_do_not_mix(capsys):
    args = build_parser(["eval"]).parse_args(["eval", "--config", "c.yaml", "a=1", "b=2"])
    assert (args.config, args.overrides, args.task, args.input) == (
        "c.yaml",
        ["a=1", "b=2"],
        None,
        None,
    )
    args = build_parser(["eval"]).parse_args(["eval", "a=1", "--config", "c.yaml"])
    assert (args.config, args.overrides) == ("c.yaml", ["a=1"])
    for argv, message in (
        (["eval"], "required: --config"),
        (["eval", "score", "--task", "avs"], "required: --input"),
        (
            ["eval", "score", "--task", "avs", "--input", "x", "--config", "c"],
            "--task and --input only",
        ),
        (["eval", "--config", "c", "--task", "avs"], "belong to `avfusion eval score`"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
