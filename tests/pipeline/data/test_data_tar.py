"""The shard tar reader groups exactly like webdataset and fails loudly on damage."""

from __future__ import annotations

import io
import tarfile

import pytest
from webdataset.tariterators import group_by_keys, tar_file_iterator

from avbase.shardformat import CorruptShard, tar_samples


def webdataset_samples(data: bytes) -> list[dict]:
    files = ({**f, "__url__": "u"} for f in tar_file_iterator(io.BytesIO(data)))
    return [{k: v for k, v in s.items() if k != "__url__"} for s in group_by_keys(files)]


def ours(data: bytes, wanted=lambda i: True, last=10**9) -> list[tuple[int, dict]]:
    return [
        (i, {k: bytes(v) if k != "__key__" else v for k, v in s.items()})
        for i, s in tar_samples(io.BytesIO(data), wanted, last)
    ]


def make_tar(names: list[str], fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for n, name in enumerate(names):
            data = f"{name}:{n}".encode() * (n + 1)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_real_shard_matches_webdataset(shard_set):
    data = (shard_set / "shard-000001.tar").read_bytes()
    assert [s for _, s in ours(data)] == webdataset_samples(data)
    assert [i for i, _ in ours(data)] == list(range(8))


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_and_prefixed_names(fmt):
    long_key = "d" * 60 + "/" + "k" * 80 if fmt == tarfile.USTAR_FORMAT else "k" * 150
    names = [f"{long_key}.json", f"{long_key}.f00.jpg", "dir/short_1.json", "dir/short_1.MEL.npy"]
    data = make_tar(names, fmt)
    assert [s for _, s in ours(data)] == webdataset_samples(data)
    assert ours(data)[1][1]["__key__"] == "dir/short_1" and "mel.npy" in ours(data)[1][1]


def test_unwanted_samples_are_skipped_and_reading_stops_after_the_last():
    names = [f"s{i}.{ext}" for i in range(6) for ext in ("json", "mel.npy")]
    data = make_tar(names)
    got = ours(data, wanted=lambda i: i in (1, 3), last=3)
    assert [i for i, _ in got] == [1, 3] and got[1][1]["__key__"] == "s3"


def test_damage_raises_corrupt_shard_after_the_intact_samples():
    names = [f"s{i}.{ext}" for i in range(4) for ext in ("json", "mel.npy")]
    data = make_tar(names)
    offsets = [m.offset for m in tarfile.open(fileobj=io.BytesIO(data)).getmembers()]
    garbled = bytearray(data)
    garbled[offsets[4] : offsets[4] + 50] = b"\x01" * 50  # header of s2.json
    seen = []
    with pytest.raises(CorruptShard, match="checksum"):
        for i, _ in tar_samples(io.BytesIO(bytes(garbled)), lambda i: True, 99):
            seen.append(i)
    assert seen == [0]  # s1 is complete only once s2 starts: lost too
    with pytest.raises(CorruptShard, match="truncated"):
        ours(data[: offsets[5] + 512 + 10])  # inside s2.mel.npy's data
    seen.clear()
    with pytest.raises(CorruptShard, match="truncated"):  # no end-of-archive marker:
        for i, _ in tar_samples(io.BytesIO(data[: offsets[4]]), lambda i: True, 99):
            seen.append(i)  # s1 may be incomplete
    assert seen == [0]
