"""Key adapters between the official state-dict layout and ours (timm's ``checkpoint_filter_fn``).

Encoder keys are identical in both layouts; only the AVMAE decoders differ: official
``audio_decoder_blocks.3.…`` ↔ ours ``audio_decoder.blocks.3.…``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from torch import Tensor

# A decoder part: official ``audio_decoder_blocks.3.…`` ↔ ours ``audio_decoder.blocks.3.…``.
_DECODER_KEY = re.compile(
    r"^(image|audio)_decoder[._](mask_token|pos_embed|embed|blocks|norm|pred)(?=\.|$)"
)


def adapt_keys(state: Mapping[str, Tensor], to: Literal["official", "ours"]) -> dict[str, Tensor]:
    """``state`` with the decoder keys renamed to the official layout or to ours (timm's
    ``checkpoint_filter_fn``); encoder keys are the same in both, so are left as they are.
    Keys already in the target layout pass unchanged, so either layout may come in."""
    sep = "_" if to == "official" else "."
    return {
        _DECODER_KEY.sub(lambda m: f"{m[1]}_decoder{sep}{m[2]}", k): v for k, v in state.items()
    }
