"""Classification-evaluation arithmetic (REFERENCE.md §8): LARS, layer decay, mixup, bias init,
losses, multi-clip averaging, metrics, label lists, evaluation views, chunked kNN."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from avbase.errors import AvfusionError
from model import DeepAVFusion, get_model_config
from model.heads.classification import AVClassifier, frequency_bias
from pipeline.config import ConfigError, DataConfig
from pipeline.data.augment import Augment, EvalView
from pipeline.engine.optim import LARS, layer_decay_groups, layer_id
from pipeline.engine.schedule import LRSchedule
from pipeline.eval import metrics as M
from pipeline.eval.classification import check_label_sets
from pipeline.eval.config import EvalConfig, load_eval_config
from pipeline.eval.targets import (
    ClassificationLoss,
    EvalInputError,
    class_frequencies,
    mix,
    mixup_lambdas,
    soft_targets,
)
from pipeline.pretrain.probe import knn_top1, merge_features
from preprocess import labels as L


def _classifier(frozen: bool, batchnorm: bool = True, classes: int = 5, bias=None) -> AVClassifier:
    torch.manual_seed(0)
    return AVClassifier(DeepAVFusion(get_model_config("debug")), classes, batchnorm, frozen, bias)


# -- optimisers ----------------------------------------------------------------------------------


def test_lars_matches_a_hand_computation():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = LARS([w, b], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    ref_w, ref_b, mu_w, mu_b = (
        w.detach().clone(),
        b.detach().clone(),
        torch.zeros(2, 2),
        torch.zeros(2),
    )
    for grad_w, grad_b in (
        (torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0.5, 0.5])),
        (torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([-1.0, 2.0])),
    ):
        w.grad, b.grad = grad_w.clone(), grad_b.clone()
        opt.step()
        # reference: decay and trust ratio for the matrix only, then momentum SGD
        g = grad_w + 0.1 * ref_w
        ratio = 0.001 * math.sqrt(float((ref_w**2).sum())) / math.sqrt(float((g**2).sum()))
        mu_w = 0.9 * mu_w + g * ratio
        mu_b = 0.9 * mu_b + grad_b
        ref_w, ref_b = ref_w - 0.5 * mu_w, ref_b - 0.5 * mu_b
        assert torch.allclose(w.detach(), ref_w, atol=1e-7) and torch.allclose(
            b.detach(), ref_b, atol=1e-7
        )


def test_lars_zero_weight_uses_unit_ratio():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=1.0, momentum=0.0)
    w.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(w.detach(), -torch.ones(2, 2))


def _expected_layer(name: str, depth: int) -> int:
    parts = name.split(".")
    if parts[0] != "encoder":
        return depth + 1  # heads
    if parts[1] == "fusion_tokens" or parts[2:3] in (["patch_embed"], ["pos_embed"]):
        return 0
    if parts[1] == "fusion_blocks":
        return int(parts[2]) + 1
    if parts[2] == "blocks":
        return int(parts[3]) + 1
    assert parts[1] == "fusion_norm" or parts[2] == "norm", name
    return depth + 1


def test_layer_decay_ids_and_groups_cover_every_parameter():
    model = _classifier(frozen=False, batchnorm=False)
    depth = len(model.encoder.image.blocks)
    names = dict(model.named_parameters())
    assert {layer_id(n, depth) for n in names} == set(range(depth + 2))
    for name in names:
        assert layer_id(name, depth) == _expected_layer(name, depth), name
    groups = layer_decay_groups(model, depth, weight_decay=0.05, layer_decay=0.75)
    grouped = {id(p): g for g in groups for p in g["params"]}
    trainable = [(n, p) for n, p in names.items() if p.requires_grad]
    assert len(grouped) == len(trainable)  # each trainable tensor exactly once
    for name, p in trainable:
        g = grouped[id(p)]
        assert g["lr_scale"] == pytest.approx(0.75 ** (depth + 1 - _expected_layer(name, depth)))
        assert g["weight_decay"] == (0.05 if p.ndim > 1 else 0.0), name
    sched = LRSchedule.plain(EvalConfig().optim, 256)  # lr = blr = 0.1, 60 epochs, 10 warm-up
    opt = torch.optim.AdamW(groups)
    assert sched.apply(opt, 5.0) == pytest.approx(0.05)  # half way through the warm-up
    assert all(g["lr"] == pytest.approx(0.05 * g["lr_scale"]) for g in opt.param_groups)


def test_linear_probe_trains_six_tensors_and_keeps_the_encoder_in_eval_mode():
    model = _classifier(frozen=True)
    assert len([p for p in model.parameters() if p.requires_grad]) == 6
    model.train()
    assert not model.encoder.training and model.norms["image"].training
    out = model(torch.randn(4, 3, 64, 64), torch.randn(4, 1, 128, 192))
    assert set(out) == {"image", "audio", "fusion", "all"} and out["all"].shape == (4, 5)
    assert torch.allclose(out["all"], (out["image"] + out["audio"] + out["fusion"]) / 3)
    out["all"].sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(h.bias.abs().sum() == 0 for h in _classifier(frozen=True).heads.values())


def test_bias_init_from_class_frequencies():
    # multi-label: 12 clips, 9 label occurrences → f = counts / occurrences (the release's
    # class_dist), not counts / clips
    manifest = {"labels": ["a", "b", "c"], "label_counts": [6, 3, 0], "labelled_inputs": 12}
    freq = class_frequencies([manifest], ["/data/train"])
    assert freq.tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    bias = frequency_bias(freq)
    f1, f2 = 2 / 3, 1 / 3
    assert bias.tolist() == pytest.approx(
        [
            math.log((f1 + 1e-3) / (1 - f1 + 1e-3)),
            math.log((f2 + 1e-3) / (1 - f2 + 1e-3)),
            math.log(0.001 / 1.001),
        ],
        rel=1e-5,
    )
    model = _classifier(frozen=False, batchnorm=False, classes=3, bias=bias)
    assert all(torch.equal(h.bias.detach(), bias) for h in model.heads.values())
    with pytest.raises(EvalInputError, match="/data/train/manifest.json: no label_counts"):
        class_frequencies([{"labels": ["a"]}], ["/data/train"])


# -- mixup and losses ---------------------------------------------------------------------------


def test_mixup_pairs_with_the_reversed_batch_per_sample_lambda():
    gen = torch.Generator().manual_seed(3)
    lam = mixup_lambdas(6, 1.0, gen)
    assert lam.shape == (6,) and ((lam > 0) & (lam < 1)).all() and len(set(lam.tolist())) == 6
    assert torch.equal(
        lam, mixup_lambdas(6, 1.0, torch.Generator().manual_seed(3))
    )  # resume-reproducible
    image, audio = torch.randn(6, 3, 4, 4), torch.randn(6, 1, 8, 8)
    target = soft_targets(torch.tensor([0, 1, 2, 0, 1, 2]), 3, False, 0.0)
    for x in (image, audio, target):  # the same λ for every input
        mixed = mix(x, lam)
        for i in range(6):
            assert torch.allclose(mixed[i], lam[i] * x[i] + (1 - lam[i]) * x[5 - i], atol=1e-6)


def test_soft_targets_smoothing_and_multi_hot():
    t = soft_targets(torch.tensor([1]), 4, False, 0.1)
    assert t[0].tolist() == pytest.approx([0.025, 0.925, 0.025, 0.025])
    t = soft_targets(torch.tensor([[1.0, 0.0, 1.0]]), 3, True, 0.0)
    assert t.tolist() == [[1.0, 0.0, 1.0]]


def test_class_frequency_division_is_the_release_factor():
    cfg = EvalConfig(task="finetune")
    freq = torch.tensor([0.5, 0.25, 0.25, 0.0])
    logits, target = torch.randn(5, 4), soft_targets(torch.tensor([0, 1, 2, 0, 1]), 4, False, 0.1)
    plain = torch.sum(-target[:, :3] * F.log_softmax(logits[:, :3], -1), -1).mean()
    assert ClassificationLoss(cfg, 4, False, freq)(logits, target) == pytest.approx(
        float(plain * (1 / freq[:3]).mean())
    )
    cfg.classification.class_freq_division = False
    full = torch.sum(-target * F.log_softmax(logits, -1), -1).mean()
    assert ClassificationLoss(cfg, 4, False, None)(logits, target) == pytest.approx(float(full))
    linear = EvalConfig(task="linear")  # default: no division for the probe
    assert ClassificationLoss(linear, 4, False, None)(logits, target) == pytest.approx(float(full))


def test_multi_label_loss_weights_each_class_by_its_inverse_frequency():
    """The release's BCE(reduction='none') / f per class, then the mean (AudioSet-bal)."""
    cfg = EvalConfig(task="finetune")
    freq = torch.tensor([0.5, 0.25, 0.25, 0.0])  # the last class never occurs: dropped
    logits = torch.tensor([[0.0, 2.0, -1.0, 5.0], [1.0, -2.0, 0.5, 5.0]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    # BCE(x, y) = log(1 + e^x) − x·y, element by element over the 3 seen classes
    terms = [
        [math.log(2), math.log(1 + math.e**2), math.log(1 + math.e**-1) + 1],
        [math.log(1 + math.e), math.log(1 + math.e**-2) + 2, math.log(1 + math.e**0.5) - 0.5],
    ]
    expected = sum(t / f for row in terms for t, f in zip(row, (0.5, 0.25, 0.25), strict=True)) / 6
    got = ClassificationLoss(cfg, 4, True, freq)(logits, target)
    assert float(got) == pytest.approx(expected, rel=1e-6)


# -- metrics and views --------------------------------------------------------------------------


def test_multi_clip_scores_are_averaged_per_video():
    keys = ["a", "b", "a", "c", "b", "a"]
    scores = {
        "all": torch.tensor(
            [[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [5.0, 5.0], [0.0, 4.0], [2.0, 3.0]]
        )
    }
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    k, avg, lab = M.average_views(keys, scores, labels)
    assert k == ["a", "b", "c"] and lab.tolist() == [0, 1, 1]
    assert avg["all"].tolist() == [[2.0, 1.0], [0.0, 3.0], [5.0, 5.0]]


def test_topk_ap_and_auc_against_hand_values():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    labels = torch.tensor([0, 2, 1, 2])
    assert M.topk_accuracy(scores, labels, 1) == 50.0
    assert M.topk_accuracy(scores, labels, 2) == 75.0
    targets = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.float32)
    s = torch.tensor([[0.8, 0.2], [0.7, 0.9], [0.3, 0.4], [0.1, 0.5]])
    # class 0: positives ranked 1st and 3rd → AP (1/1 + 2/3)/2; class 1: ranked 1st and 3rd as well
    assert M.average_precision(s, targets).tolist() == pytest.approx([5 / 6, 5 / 6])
    # class 0: pos {0.8, 0.3} vs neg {0.7, 0.1} → 3 of 4 pairs; class 1: pos {0.9, 0.4} vs neg {0.2, 0.5} → 3/4
    assert M.roc_auc(s, targets).tolist() == pytest.approx([0.75, 0.75])
    ties = M.roc_auc(torch.tensor([[0.5], [0.5]]), torch.tensor([[1.0], [0.0]]))
    assert ties.tolist() == [0.5]
    metrics = M.classification_metrics({"all": s}, targets, multi_label=True)
    assert metrics == pytest.approx({"map_all": 500 / 6, "auc_all": 75.0})


def test_confusion_matrix_and_reports(tmp_path):
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 1])
    assert M.confusion_matrix(scores, labels, 2).tolist() == [[1, 0], [1, 1]]
    M.write_predictions(
        tmp_path / "p.jsonl", ["x", "y", "z"], scores, labels, ["cat", "dog"], 1, False
    )
    first = (tmp_path / "p.jsonl").read_text().splitlines()[0]
    assert '"key": "x"' in first and '"label": "cat"' in first and '["cat", 0.6899' in first
    png = M.save_confusion_figure(
        tmp_path / "c.png", M.confusion_matrix(scores, labels, 2), ["cat", "dog"]
    )
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eval_views_spread_windows_and_frames():
    from avbase.features import FRONTENDS, ImageSpec

    times = [0.5 + i for i in range(10)]  # 10-s clip, a frame per second
    default = Augment(FRONTENDS["deepavfusion"], ImageSpec(size=64), train=False)
    assert default._eval_view("k", 10.0, times) == (
        5.0,
        4,
        0.0,
    )  # centre window, nearest frame (tie → first)
    centres = [
        Augment(
            FRONTENDS["deepavfusion"], ImageSpec(size=64), False, view=EvalView(k, 3)
        )._eval_view("k", 10.0, times)[0]
        for k in range(3)
    ]
    assert centres == [1.5, 5.0, 8.5]
    frames = [
        Augment(
            FRONTENDS["deepavfusion"], ImageSpec(size=64), False, view=EvalView(0, 1, j, 3)
        )._eval_view("k", 10.0, times)[1]
        for j in range(3)
    ]
    assert frames == [3, 5, 6]  # frames 3..6 lie inside [3.5, 6.5]: first, middle (rounded), last
    vol = Augment(FRONTENDS["deepavfusion"], ImageSpec(size=64), False, view=EvalView(vol_db=2.0))
    gains = {vol._eval_view(k, 10.0, times)[2] for k in ("a", "b", "c")}
    assert len(gains) == 3 and all(-2 <= g <= 2 for g in gains)
    assert vol._eval_view("a", 10.0, times) == vol._eval_view("a", 10.0, times)


# -- labels and configs -------------------------------------------------------------------------


def test_label_lists_single_and_multi():
    classes, multi = L.class_list(["dog", "cat;bird", None], None)
    assert classes == ["bird", "cat", "dog"] and multi
    assert L.label_index("cat; bird", classes, True, "v.mp4") == (0, 1)
    assert L.label_counts([(0, 1), (1,), None], 3) == [1, 2, 0]
    given = L.read_class_file("c.csv", "name\nzebra\ncat\n")
    assert given == ["zebra", "cat"]
    with pytest.raises(AvfusionError, match=r"v\.mp4: class 'dog' is not in the class list"):
        L.label_index("dog", given, False, "v.mp4")
    assert L.label_problem({"label": "cat;bird", "label_index": [0, 1]}, classes, True) is None
    assert "label_index" in L.label_problem({"label": "cat", "label_index": 2}, classes, False)
    assert L.remap_index([0, 2], [2, 0, 1]) == [1, 2]


def test_train_and_test_class_lists_must_agree():
    a = {"labels": ["a", "b", "c"]}
    assert check_label_sets(a, dict(a), "/tr", "/te") == (["a", "b", "c"], False)
    with pytest.raises(
        EvalInputError, match=r"/te/manifest.json: class list differs .*class 1: 'b' .* 'x'"
    ):
        check_label_sets(a, {"labels": ["a", "x", "c"]}, "/tr", "/te")
    with pytest.raises(EvalInputError, match=r"/tr/manifest.json: no 'labels'"):
        check_label_sets({}, a, "/tr", "/te")


def test_eval_config_errors_name_the_key(tmp_path):
    base = ["data.train=/a", "data.test=/b", "encoder.checkpoint=/c"]
    assert load_eval_config(None, base).task == "linear"
    for override, key in (
        ("task=segment", "task"),
        ("encoder.init=zero", "encoder.init"),
        ("optim.layer_decay=2", "optim.layer_decay"),
        ("eval.clips=0", "eval.clips"),
        ("bogus.key=1", "bogus"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_eval_config(None, [*base, override])
    with pytest.raises(ConfigError, match="encoder.checkpoint: required"):
        load_eval_config(None, ["data.train=/a", "data.test=/b"])


def test_a_loader_section_given_a_path_keeps_its_other_keys(tmp_path):
    """``data.train=path`` (the loader's shorthand) sets data.train.shards only: the YAML's batch
    size stays; given as a path alone in YAML, the section takes DataConfig's defaults."""
    yaml_file = tmp_path / "eval.yaml"
    yaml_file.write_text(
        "encoder: {checkpoint: /c}\ndata:\n  train: {shards: /a, batch_size: 5}\n  test: /b\n"
    )
    cfg = load_eval_config(yaml_file, ["data.train=/elsewhere"])
    assert (cfg.data.train.shards, cfg.data.train.batch_size) == ("/elsewhere", 5)
    assert (cfg.data.test.shards, cfg.data.test.batch_size) == ("/b", DataConfig().batch_size)


# -- kNN probe at scale -------------------------------------------------------------------------


def test_chunked_knn_equals_dense_and_max_samples_caps():
    gen = torch.Generator().manual_seed(0)
    n = 203
    labels = torch.randint(0, 5, (n,), generator=gen)
    feats = {
        m: torch.randn(n, 16, generator=gen) + F.one_hot(labels, 16).float() * s
        for m, s in (("image", 0.5), ("audio", 1.0), ("fusion", 2.0))
    }
    feats.update(labels=labels, keys=[f"k{i}" for i in range(n)])
    dense = knn_top1(feats, chunk=n)
    assert knn_top1(feats, chunk=17) == dense
    assert 20 < dense["fusion"] <= 100
    capped = merge_features([feats], max_samples=50)
    assert capped["keys"] == [f"k{i}" for i in range(50)] and capped["image"].shape == (50, 16)


def test_eval_view_default_is_the_previous_eval_transform():
    rng = random.Random(0)
    times = sorted(rng.uniform(0, 10) for _ in range(7))
    aug = Augment(
        __import__("model.presets", fromlist=["FRONTENDS"]).FRONTENDS["deepavfusion"],
        get_model_config("debug").image,
        train=False,
    )
    centre, frame, gain = aug._eval_view("key", 10.0, times)
    assert centre == 5.0 and gain == 0.0
    assert frame == min(range(len(times)), key=lambda i: abs(times[i] - 5.0))


@pytest.mark.parametrize(
    "name, lr, epochs, warmup, task, multi_loss",
    [
        ("vggsound_linear", 1.2, 60, 10, "linear", "auto"),
        ("audioset_bal_linear", 0.6, 300, 20, "linear", "auto"),
        ("vggsound_finetune", 6e-4, 100, 20, "finetune", "auto"),
        ("audioset_bal_finetune", 6e-4, 200, 20, "finetune", "auto"),
    ],
)
def test_release_configs_hold_the_published_recipes(name, lr, epochs, warmup, task, multi_loss):
    from tests.support.procs import REPO

    cfg = load_eval_config(REPO / "configs" / "eval" / f"{name}.yaml")
    eff = cfg.train.effective_batch_size
    assert (
        cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.blr * eff / 256
    ) == pytest.approx(lr)
    assert (cfg.task, cfg.optim.epochs, cfg.optim.warmup_epochs, cfg.classification.loss) == (
        task,
        epochs,
        warmup,
        multi_loss,
    )
    if task == "finetune":
        c = cfg.classification
        assert (
            eff,
            cfg.optim.betas,
            cfg.optim.weight_decay,
            cfg.optim.layer_decay,
            cfg.encoder.drop_path,
        ) == (512, (0.9, 0.999), 0.05, 0.75, 0.2)
        assert (c.mixup, c.label_smoothing, c.batchnorm, c.bias_init, c.class_freq_division) == (
            1.0,
            0.1,
            False,
            "class_freq",
            True,
        )
    else:
        assert (
            cfg.optim.name,
            cfg.optim.momentum,
            cfg.optim.trust_coefficient,
            cfg.optim.weight_decay,
            cfg.train.precision,
            cfg.classification.batchnorm,
        ) == ("lars", 0.9, 0.001, 0.0, "fp32", True)


def test_debug_configs_load():
    from tests.support.procs import REPO

    assert load_eval_config(REPO / "configs" / "eval" / "debug_linear.yaml").task == "linear"
    assert load_eval_config(REPO / "configs" / "eval" / "debug_finetune.yaml").task == "finetune"
