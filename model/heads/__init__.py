"""Task heads over encoder states (pure ``nn.Module``; REFERENCE.md §8).

- :mod:`model.heads.classification` — linear-probe / fine-tune heads (``AVClassifier``).
- :mod:`model.heads.avs` and :mod:`model.heads.separation` — the dense-task heads, equal to the
  release's (official ``models/avsegm.py`` and ``models/avsrcsep.py``, stoneMo/DeepAVFusion at
  2768e7f), with shared blocks in :mod:`model.heads.blocks` and the key adapter to the official
  task models in :mod:`model.heads.keys`.
- :mod:`model.heads.localization` — contrastive projections of the trained localization variant.
"""

from __future__ import annotations

from .avs import AVSHead, release_avs_channels
from .blocks import release_layers
from .keys import adapt_head_keys, official_task_state_dict, split_task_state_dict
from .separation import SeparationHead

__all__ = [
    "AVSHead",
    "SeparationHead",
    "adapt_head_keys",
    "official_task_state_dict",
    "release_avs_channels",
    "release_layers",
    "split_task_state_dict",
]
