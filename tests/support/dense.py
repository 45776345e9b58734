"""Reading a dense shard set back through the loader's dense mode (one rank, scoring order)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from avbase.features import ImageSpec, get_frontend
from pipeline.config import DataConfig
from pipeline.data.dense import DenseSpec, DenseTransform
from pipeline.data.loader import build_loader
from pipeline.eval.dense import ROWS, scoring_batches


def dense_rows(root: Path | str, spec: DenseSpec, size: int = 64) -> Iterator[tuple[str, dict]]:
    """(sample key, row) for every scoring row of ``root``: every masked frame (or the centre
    frame), the image at ``size``, rank padding left out."""
    fe, image = get_frontend("deepavfusion"), ImageSpec(size=size)
    loader = build_loader(
        DataConfig(shards=str(root), batch_size=2, workers=0),
        audio=fe,
        image=image,
        rank=0,
        world_size=1,
        seed=0,
        train=False,
        transform=DenseTransform(fe, image, spec, train=False),
    )
    for batch in scoring_batches(loader):
        for r, j in enumerate(batch["sample"].tolist()):
            yield batch["key"][j], {k: batch[k][r] for k in ROWS if k in batch}
