"""The member table: every kind round-trips through its encode/decode, and a damaged member is
one MemberError naming it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from avbase.members import MEMBERS, MemberError, frame_ext, mask_ext


def test_every_kind_round_trips():
    mel = (np.arange(24, dtype=np.float32).reshape(4, 6) / 7).astype(np.float16)
    assert np.array_equal(MEMBERS["mel"].decode(bytearray(MEMBERS["mel"].encode(mel))), mel)
    meta = {"clip_seconds": 2.0, "frame_times": [0.5, 1.5]}
    assert MEMBERS["meta"].decode(MEMBERS["meta"].encode(meta)) == meta
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    assert np.array_equal(MEMBERS["mask"].decode(MEMBERS["mask"].encode(mask)), mask)
    wave = np.sin(np.arange(1600) / 9).astype(np.float32) * 0.5
    got, rate = MEMBERS["flac"].decode(MEMBERS["flac"].encode(wave, 16000))
    assert rate == 16000 and np.abs(got - wave).max() < 1 / 32767 + 1e-6  # 16-bit PCM
    image = Image.new("RGB", (12, 8), (10, 200, 30))
    back = MEMBERS["frame"].decode(MEMBERS["frame"].encode(image))
    assert back.size == (12, 8) and np.abs(np.asarray(back, int) - [10, 200, 30]).max() <= 3


def test_per_frame_kinds_name_their_frame():
    assert MEMBERS["frame"].ext_of(3) == frame_ext(3) == "f03.jpg"
    assert MEMBERS["mask"].ext_of(12) == mask_ext(12) == "f12.mask.png"
    assert MEMBERS["mel"].ext_of() == "mel.npy"


@pytest.mark.parametrize(
    "kind, data, expected",
    [
        ("mel", b"not numpy at all", "mel.npy: not a .npy file"),
        ("frame", b"\x89PNG garbage", "f00.jpg: undecodable (UnidentifiedImageError)"),
        ("mask", b"", "f00.mask.png: undecodable"),
    ],
)
def test_a_damaged_member_is_one_error_naming_it(kind, data, expected):
    name = MEMBERS[kind].ext_of(0)
    with pytest.raises(MemberError) as e:
        MEMBERS[kind].read(data, name)
    assert str(e.value).startswith(expected)


def test_checks_report_what_differs():
    mel = np.zeros((4, 6), np.float16)
    assert MEMBERS["mel"].check(mel, {}, (4, 6)) == []
    assert MEMBERS["mel"].check(mel, {}, (4, 7)) == [
        "mel float16[4, 6], expected float16[4, 7] finite"
    ]
    assert MEMBERS["mask"].check(np.zeros((8, 12), bool), (12, 8)) == []
    assert MEMBERS["mask"].check(np.zeros((8, 12), bool), (10, 8)) == ["12x8, frame is 10x8"]
    flac = (np.zeros(3200, np.float32), 16000)
    assert MEMBERS["flac"].check(flac, {"clip_seconds": 0.2, "sample_rate": 16000}) == []
    assert MEMBERS["flac"].check(flac, {"clip_seconds": 0.1, "sample_rate": 16000}) == [
        "3200 samples at 16000 Hz, expected 1600 at 16000 Hz"
    ]
