"""Audio-event classification: linear probe and fine-tuning (REFERENCE.md §8).

- ``task: linear``: frozen encoder (eval mode, unmasked, no grad) → per-modality BatchNorm1d
  (affine=False) + Linear heads; loss on the mean of the three logit sets; LARS.
- ``task: finetune``: the whole encoder trains (drop-path, layer-wise LR decay, AdamW); heads
  without BatchNorm, bias from class frequencies; mixup (λ per sample, partner = the reversed
  batch, the same λ for image and audio) and label smoothing on soft targets.

Evaluation (every ``eval.every_epochs`` single-clip; at the end ``eval.clips`` × ``eval.frames``
views averaged per video) reports every head (image, audio, fusion, all) and writes
``predictions.jsonl`` plus a confusion matrix (single-label) or a per-class AP table (multi-label).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from avbase.shardformat import MANIFEST
from model.heads.classification import ALL_HEADS, AVClassifier, frequency_bias
from pipeline.data.augment import EvalView
from pipeline.data.loader import shard_loader
from pipeline.data.shardio import join
from pipeline.engine.checkpoint import gather_objects
from pipeline.engine.distributed import DistInfo, engine_dtype
from pipeline.engine.loop import Engine, Task
from pipeline.engine.optim import LARS, layer_decay_groups
from pipeline.engine.schedule import LRSchedule
from pipeline.eval import metrics as M
from pipeline.eval.config import EvalConfig
from pipeline.eval.encoder import LoadedEncoder, load_encoder
from pipeline.eval.run import run_folder
from pipeline.eval.targets import (
    ClassificationLoss,
    EvalInputError,
    class_frequencies,
    mix,
    mixup_lambdas,
    needs_frequencies,
    soft_targets,
)

log = logging.getLogger("avfusion.eval")


class Classification(Task):
    """The encoder with one linear head per modality; the loss on the averaged logits."""

    def __init__(self, cfg: EvalConfig, info: DistInfo, enc: LoadedEncoder):
        self.cfg, self.info, self.enc = cfg, info, enc
        self.train_loader = self.data_loader(cfg.data.train, train=True)
        test = self.data_loader(cfg.data.test, train=False)
        test.close()
        self.classes, self.multi = check_label_sets(
            self.train_loader.manifest,
            test.manifest,
            self.train_loader.sets.paths[0],
            test.sets.paths[0],
        )
        c = cfg.classification
        self.freq = (
            class_frequencies(self.train_loader.sets.manifests, self.train_loader.sets.paths)
            if needs_frequencies(cfg)
            else None
        )
        self._model = AVClassifier(
            enc.encoder,
            len(self.classes),
            batchnorm=c.batchnorm,
            frozen=cfg.task == "linear",
            bias=frequency_bias(self.freq) if c.bias_init == "class_freq" else None,
        )
        self.loss_fn = ClassificationLoss(cfg, len(self.classes), self.multi, self.freq)
        self.dtype = engine_dtype(cfg.engine_spec())

    def data_loader(self, data, train: bool, view: EvalView | None = None):
        i = self.info
        return shard_loader(
            data if train else replace(data, remainder="pad"),
            self.enc.config,
            i.rank,
            i.world_size,
            self.cfg.train.seed,
            i.device,
            train=train,
            labels=True,
            view=view,
        )

    def model(self):
        return self._model

    def loader(self):
        return self.train_loader

    def schedule(self, effective_batch: int) -> LRSchedule:
        return LRSchedule.plain(self.cfg.optim, effective_batch)

    def optimizer(self, model, lr: float):
        o = self.cfg.optim
        groups = layer_decay_groups(
            model, len(self.enc.encoder.image.blocks), o.weight_decay, o.layer_decay
        )
        if o.name == "lars":
            return LARS(
                groups,
                lr=lr,
                weight_decay=o.weight_decay,
                momentum=o.momentum,
                trust_coefficient=o.trust_coefficient,
            )
        return torch.optim.AdamW(groups, lr=lr, betas=o.betas, weight_decay=o.weight_decay)

    def step(self, engine, batch: dict, gen: torch.Generator):
        c, device = self.cfg.classification, self.info.device
        image, audio = batch["image"].to(device, self.dtype), batch["audio"].to(device, self.dtype)
        target = soft_targets(batch["label"], len(self.classes), self.multi, c.label_smoothing)
        target = target.to(device)
        if c.mixup > 0:
            lam = mixup_lambdas(len(image), c.mixup, gen).to(device)
            image, audio, target = (mix(x, lam) for x in (image, audio, target))
        loss = self.loss_fn(engine(image, audio)["all"].float(), target)
        return loss, loss.detach().reshape(1)

    def after_epoch(self, engine: Engine) -> None:
        epoch = engine.progress.epoch
        if epoch % self.cfg.eval.every_epochs == 0 and epoch < self.cfg.optim.epochs:
            engine.log({f"eval/{k}": v for k, v in self.evaluate(engine, final=False).items()})

    def views(self, final: bool) -> list[EvalView]:
        e = self.cfg.eval
        if not final:
            return [EvalView()]
        return [
            EvalView(k, e.clips, j, e.frames, e.random_vol_db)
            for k in range(e.clips)
            for j in range(e.frames)
        ]

    def evaluate(self, engine: Engine, final: bool) -> dict:
        """Metrics of every head on the test set (views averaged per video); reports on the final
        one. Every rank predicts its share; rank 0 scores (others return {})."""
        parts = [
            predict(
                engine.module,
                self.data_loader(self.cfg.data.test, train=False, view=view),
                self.info.device,
                self.dtype,
            )
            for view in self.views(final)
        ]
        gathered = gather_objects(parts)
        if not self.info.is_main:
            return {}
        rows = [p for rank_parts in gathered for p in rank_parts]
        keys, scores, labels = M.average_views(
            [k for p in rows for k in p["keys"]],
            {h: torch.cat([p[h] for p in rows]) for h in ALL_HEADS},
            torch.cat([p["labels"] for p in rows]),
        )
        metrics = M.classification_metrics(scores, labels, self.multi)
        result = {k: round(v, 3) for k, v in metrics.items()}
        result["videos"] = len(keys)
        if final:
            self.write_reports(engine, keys, scores["all"], labels)
        return result

    def write_reports(self, engine, keys: list[str], scores, labels) -> None:
        out, classes = engine.folder.out, self.classes
        files = [
            M.write_predictions(
                out / "predictions.jsonl",
                keys,
                scores,
                labels,
                classes,
                self.cfg.eval.top_k,
                self.multi,
            )
        ]
        if self.multi:
            files.append(M.write_class_ap(out / "class_ap.tsv", scores, labels, classes))
        else:
            matrix = M.confusion_matrix(scores, labels, len(classes))
            files.append(M.save_confusion_figure(out / "confusion.png", matrix, classes))
        for path in files:
            engine.folder.artifact(path, "eval")


def run(cfg: EvalConfig, info: DistInfo) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    enc = load_encoder(cfg.encoder)
    task = Classification(cfg, info, enc)
    folder = run_folder(cfg, info, enc)
    engine = Engine(cfg.engine_spec(), info, task, folder)
    engine.fit()
    final = task.evaluate(engine, final=True)
    engine.log({f"eval/{k}": v for k, v in final.items()})
    folder.close("FINISHED")
    final.update(
        wall_s=round(time.perf_counter() - t0, 1),
        steps=engine.progress.step,
        classes=len(task.classes),
    )
    if enc.pretrain_run_id:
        final["pretrain_run_id"] = enc.pretrain_run_id
    return final


# -- data -----------------------------------------------------------------------------------


def check_label_sets(
    train: dict, test: dict, train_root: str, test_root: str
) -> tuple[list[str], bool]:
    """The shared class list and multi-label flag; :class:`EvalInputError` naming the manifest and
    the first class that differs when the sets disagree, or when a set is unlabelled."""
    for root, m in ((train_root, train), (test_root, test)):
        if not m.get("labels"):
            raise EvalInputError(
                f"{join(root, MANIFEST)}: no 'labels' — the shard set is unlabelled "
                "(build it from a list with a 'label' column)"
            )
    a, b = train["labels"], test["labels"]
    if a != b:
        diff = next(
            (
                f"class {i}: {x!r} in the train set, {y!r} in the test set"
                for i, (x, y) in enumerate(zip(a, b, strict=False))
                if x != y
            ),
            None,
        )
        diff = diff or (
            f"{len(a)} train classes, {len(b)} test classes "
            f"(first extra: {(a[len(b) :] or b[len(a) :])[0]!r})"
        )
        raise EvalInputError(
            f"{join(test_root, MANIFEST)}: class list differs from {join(train_root, MANIFEST)} "
            f"({diff}); build both with the same --classes file"
        )
    if bool(train.get("multi_label")) != bool(test.get("multi_label")):
        raise EvalInputError(
            f"{join(test_root, MANIFEST)}: multi_label differs from the train set's"
        )
    return list(a), bool(train.get("multi_label"))


# -- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def predict(model, loader, device: torch.device, dtype: torch.dtype) -> dict:
    """Logits of every batch: {"keys", "labels", head: ``[N, C]``} (CPU, float32)."""
    was_training = model.training
    model.eval()
    out = {h: [] for h in ALL_HEADS} | {"keys": [], "labels": []}
    try:
        for batch in loader:
            logits = model(batch["image"].to(device, dtype), batch["audio"].to(device, dtype))
            for h in ALL_HEADS:
                out[h].append(logits[h].float().cpu())
            out["keys"] += batch["key"]
            out["labels"].append(batch["label"].cpu())
    finally:
        loader.close()
        model.train(was_training)
    return {k: (v if k == "keys" else torch.cat(v)) for k, v in out.items()}
