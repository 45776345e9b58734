"""kNN probe (REFERENCE.md §7.4): 1-NN label agreement of pooled encoder features.

Per modality (image, audio, fusion = mean of all fusion tokens): token mean, L2-normalised,
cosine similarity to every probe feature; the **second** best match is taken (the first is
the query itself); "all" sums the three similarity matrices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MODALITIES = ("image", "audio", "fusion")


@torch.no_grad()
def extract_features(model, loader, device: torch.device, dtype: torch.dtype) -> dict:
    """Unmasked encoder features of every batch: {"keys", "labels" [N], modality: [N, D]}."""
    was_training = model.training
    model.eval()
    feats = {m: [] for m in MODALITIES}
    keys, labels = [], []
    for batch in loader:
        out = model.forward_encoder(batch["image"].to(device, dtype), batch["audio"].to(device, dtype))
        for m in MODALITIES:
            feats[m].append(out.pooled[m].float().cpu())
        keys.extend(batch["key"])
        labels.append(batch["label"].cpu())
    model.train(was_training)
    result = {m: torch.cat(v) if v else torch.empty(0) for m, v in feats.items()}
    result.update(keys=keys, labels=torch.cat(labels) if labels else torch.empty(0, dtype=torch.long))
    return result


def merge_features(parts: list[dict]) -> dict:
    """Concatenate per-rank features, dropping repeated keys (rank padding)."""
    seen, index = set(), []
    flat_keys = [k for p in parts for k in p["keys"]]
    for i, k in enumerate(flat_keys):
        if k not in seen:
            seen.add(k)
            index.append(i)
    idx = torch.tensor(index, dtype=torch.long)
    merged = {m: torch.cat([p[m] for p in parts])[idx] for m in MODALITIES}
    merged["labels"] = torch.cat([p["labels"] for p in parts])[idx]
    merged["keys"] = [flat_keys[i] for i in index]
    return merged


def knn_top1(feats: dict) -> dict[str, float]:
    """1-NN accuracy (%) per modality and for "all" (summed similarities)."""
    labels = feats["labels"]
    if len(labels) < 2:
        raise ValueError("kNN probe needs at least 2 labelled samples")
    if (labels < 0).any():
        raise ValueError("kNN probe: the probe shard set has unlabelled samples (label_index missing)")
    sims = {m: (lambda f: f @ f.T)(F.normalize(feats[m], dim=-1)) for m in MODALITIES}
    sims["all"] = sum(sims[m] for m in MODALITIES)
    result = {}
    for name, sim in sims.items():
        neighbour = sim.topk(2, dim=1).indices[:, 1]  # NOTE: official rule — skip the best (the query)
        result[name] = float((labels[neighbour] == labels).float().mean() * 100)
    return result


def run(args) -> int:
    """``avfusion probe WEIGHTS --shards DEST``: kNN top-1 of exported or official weights."""
    import json

    from model.checkpoints import CheckpointError, load_official
    from model.presets import get_frontend
    from pipeline.config import DataConfig
    from pipeline.data import build_loader

    try:
        model = load_official(args.weights, preset=args.preset)
    except CheckpointError as e:  # the library's advice names its argument; here it is the flag
        raise CheckpointError(str(e).replace("pass preset= or model=", "pass --preset NAME")) from None
    cfg = model.config
    loader = build_loader(DataConfig(shards=args.shards, batch_size=args.batch_size, workers=args.workers),
                          audio=get_frontend(cfg.audio_frontend), image=cfg.image, rank=0, world_size=1,
                          seed=0, train=False, labels=True)
    try:
        feats = extract_features(model, loader, torch.device("cpu"), torch.float32)
    finally:
        loader.close()
    merged = merge_features([feats])  # drops the repeats that pad the last batch
    print(json.dumps({"weights": args.weights, "shards": args.shards, "samples": len(merged["keys"]),
                      "knn_top1": knn_top1(merged)}))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe", help="kNN probe (1-NN top-1 %%) of model weights on a labelled shard set",
        description="Unmasked encoder features (token means per modality, all fusion tokens) of every "
                    "sample, 1-NN label agreement with the second-best cosine match (REFERENCE §7.4).")
    p.add_argument("weights", help="exported .safetensors or an official checkpoint (.pth)")
    p.add_argument("--shards", required=True, help="labelled shard set (directory or s3://)")
    p.add_argument("--preset", default=None, help="model preset (default: inferred from the weights)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=run)
