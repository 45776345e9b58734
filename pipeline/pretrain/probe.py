"""kNN probe (REFERENCE.md §7.4): 1-NN label agreement of pooled encoder features.

Per modality (image, audio, fusion = mean of all fusion tokens): token mean, L2-normalised,
cosine similarity to every probe feature; the **second** best match is taken (the first is
the query itself); "all" sums the three similarity matrices.

Scale: ``probe.max_samples`` caps the probe set (the first samples in rank order after
de-duplication; each rank stops extracting at its share), and similarities are computed for
``chunk`` queries at a time, so memory is O(chunk · N) instead of O(N²) — same result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODALITIES = ("image", "audio", "fusion")


@torch.no_grad()
def extract_features(
    model, loader, device: torch.device, dtype: torch.dtype, max_samples: int | None = None
) -> dict:
    """Unmasked encoder features of every batch (of the first batches holding ``max_samples``):
    {"keys", "labels" [N], modality: [N, D]}."""
    was_training = model.training
    model.eval()
    feats = {m: [] for m in MODALITIES}
    keys, labels = [], []
    for batch in loader:
        out = model.forward_encoder(
            batch["image"].to(device, dtype), batch["audio"].to(device, dtype)
        )
        for m in MODALITIES:
            feats[m].append(out.pooled[m].float().cpu())
        keys.extend(batch["key"])
        labels.append(batch["label"].cpu())
        if max_samples is not None and len(keys) >= max_samples:
            break
    model.train(was_training)
    result = {m: torch.cat(v) if v else torch.empty(0) for m, v in feats.items()}
    result.update(
        keys=keys, labels=torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    )
    return result


def merge_features(parts: list[dict], max_samples: int | None = None) -> dict:
    """Concatenate per-rank features, dropping repeated keys (rank padding); keep at most
    ``max_samples`` (the first ones in rank order)."""
    seen, index = set(), []
    flat_keys = [k for p in parts for k in p["keys"]]
    for i, k in enumerate(flat_keys):
        if k not in seen and (max_samples is None or len(index) < max_samples):
            seen.add(k)
            index.append(i)
    idx = torch.tensor(index, dtype=torch.long)
    merged = {m: torch.cat([p[m] for p in parts])[idx] for m in MODALITIES}
    merged["labels"] = torch.cat([p["labels"] for p in parts])[idx]
    merged["keys"] = [flat_keys[i] for i in index]
    return merged


def knn_top1(feats: dict, chunk: int = 1024) -> dict[str, float]:
    """1-NN accuracy (%) per modality and for "all" (summed similarities), ``chunk`` queries at a time."""
    labels = feats["labels"]
    if len(labels) < 2:
        raise ValueError("kNN probe needs at least 2 labelled samples")
    if labels.ndim != 1 or (labels < 0).any():
        raise ValueError(
            "kNN probe: the probe shard set has unlabelled or multi-label samples "
            "(needs one label_index per sample)"
        )
    normed = {m: F.normalize(feats[m], dim=-1) for m in MODALITIES}
    hits = {name: 0 for name in (*MODALITIES, "all")}
    for lo in range(0, len(labels), chunk):
        sims = {m: normed[m][lo : lo + chunk] @ normed[m].T for m in MODALITIES}  # [chunk, N]
        sims["all"] = sum(sims[m] for m in MODALITIES)
        for name, sim in sims.items():
            neighbour = sim.topk(2, dim=1).indices[
                :, 1
            ]  # NOTE: official rule — skip the best (the query)
            hits[name] += int((labels[neighbour] == labels[lo : lo + chunk]).sum())
    return {name: hits[name] / len(labels) * 100 for name in hits}


def run(args) -> int:
    """``avfusion probe WEIGHTS --shards DEST``: kNN top-1 of exported or official weights."""
    import json

    from avbase.features import get_frontend
    from model.checkpoints import CheckpointError, load_official
    from pipeline.config import DataConfig
    from pipeline.data.loader import build_loader

    try:
        model = load_official(args.weights, preset=args.preset)
    except CheckpointError as e:  # the library's advice names its argument; here it is the flag
        raise CheckpointError(
            str(e).replace("pass preset= or model=", "pass --preset NAME")
        ) from None
    cfg = model.config
    loader = build_loader(
        DataConfig(shards=args.shards, batch_size=args.batch_size, workers=args.workers),
        audio=get_frontend(cfg.audio_frontend),
        image=cfg.image,
        rank=0,
        world_size=1,
        seed=0,
        train=False,
        labels=True,
    )
    try:
        feats = extract_features(
            model, loader, torch.device("cpu"), torch.float32, args.max_samples
        )
    finally:
        loader.close()
    merged = merge_features([feats], args.max_samples)  # drops the repeats that pad the last batch
    print(
        json.dumps(
            {
                "weights": args.weights,
                "shards": args.shards,
                "samples": len(merged["keys"]),
                "knn_top1": knn_top1(merged),
            }
        )
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe",
        help="kNN probe (1-NN top-1 %%) of model weights on a labelled shard set",
        description="Unmasked encoder features (token means per modality, all fusion tokens) of every "
        "sample, 1-NN label agreement with the second-best cosine match (REFERENCE §7.4).",
    )
    p.add_argument("weights", help="exported .safetensors or an official checkpoint (.pth)")
    p.add_argument("--shards", required=True, help="labelled shard set (directory or s3://)")
    p.add_argument(
        "--preset", default=None, help="model preset (default: inferred from the weights)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--max-samples", type=int, default=None, help="use at most this many probe samples"
    )
    p.set_defaults(func=run)
