"""One format module: verify reads exactly what the loader reads, and catches damaged samples
that a consistent checksum does not reveal."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from avbase import shardformat as fmt
from avbase.features import get_frontend
from avbase.members import MEL_EXT, META_EXT, frame_ext
from pipeline.data.shardio import ShardStore
from preprocess.options import SampleOptions
from preprocess.shards import ShardWriter, make_manifest, write_errors, write_manifest
from preprocess.storage import Store
from preprocess.verify import verify

OPTS = SampleOptions(clip_seconds=2.0, min_clip_seconds=2.0, frame_size=32)
FE = get_frontend(OPTS.preset)
LABELS = ["cat", "dog"]


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_sample(
    source: str,
    k: int,
    label: int = 0,
    *,
    mel_frames: int | None = None,
    label_index: int | None = None,
    frame: bytes | None = None,
    ext=str,
) -> fmt.Sample:
    """A sample as the builder writes it; keyword arguments damage one part of it."""
    meta = {
        "source": f"/videos/{source}.mp4",
        "source_id": source,
        "clip_index": k,
        "clip_start": 2.0 * k,
        "clip_seconds": 2.0,
        "frame_times": [0.5, 1.5],
        "sample_rate": FE.sample_rate,
        "mel_fps": FE.frames_per_second,
        "n_frames": 2,
        "label": LABELS[label],
        "label_index": label if label_index is None else label_index,
    }
    mel = np.zeros((FE.n_mels, mel_frames or FE.clip_frames(2.0)), np.float16)
    buf = io.BytesIO()
    np.save(buf, mel, allow_pickle=False)
    members = [
        (META_EXT, json.dumps(meta).encode()),
        (MEL_EXT, buf.getvalue()),
        (frame_ext(0), _jpeg(48, 32)),
        (frame_ext(1), frame or _jpeg(48, 32)),
    ]
    return f"{source}_{k}", [(ext(e), data) for e, data in members]


def write_set(root, shards: list[list[fmt.Sample]]) -> dict:
    """A shard set whose manifest agrees with its tars (sizes, sha256, counts)."""
    store = Store(str(root))
    entries = []
    for i, samples in enumerate(shards):
        writer = ShardWriter(store, i)
        for s in samples:
            writer.add(s)
        entries.append(writer.close())
    write_errors(store, [])
    manifest = make_manifest(OPTS.preset_record(), entries, 0, LABELS, {})
    write_manifest(store, manifest)
    return manifest


def loader_keys(root) -> list[str]:
    """Every key the training loader's shard reader yields (raises where it cannot read)."""
    manifest = json.loads((root / fmt.MANIFEST).read_text())
    store = ShardStore(str(root), manifest["shards"], retries=0)
    return [
        s["__key__"]
        for i, e in enumerate(manifest["shards"])
        for _, s in store.samples(i, range(e["num_samples"]))
    ]


def _damage_last_header(root, manifest: dict) -> None:
    """Replace the end-of-archive block of shard 1 by a header with a bad checksum, and record
    the new size and sha256 in the manifest (so only the tar reader can notice)."""
    entry = manifest["shards"][1]
    path = root / entry["name"]
    data = bytearray(path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
        end = max(m.offset_data + m.size for m in tf.getmembers())
    end += -end % 512
    data[end : end + 512] = b"x.json".ljust(512, b"\0")
    # the stdlib stream reader the old verify used stops there silently, as if at the end
    assert (
        len(list(tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r|")))
        == 4 * entry["num_samples"]
    )
    path.write_bytes(bytes(data))
    h = fmt.HashingFile(io.BytesIO())
    h.write(bytes(data))
    entry.update(bytes=len(data), sha256=h.sha.hexdigest())
    Store(str(root)).write_bytes(fmt.MANIFEST, json.dumps(manifest).encode())


@pytest.mark.parametrize(
    "case, readable",
    [
        ("clean", True),
        ("upper-case extensions", True),  # the old verify rejected these; the loader reads them
        ("damaged header", False),  # the old verify accepted this; the loader rejects it
    ],
)
def test_verify_and_loader_agree(tmp_path, case, readable):
    ext = str.upper if case == "upper-case extensions" else str
    shards = [[make_sample(f"v{v}", k, v % 2, ext=ext) for k in range(2)] for v in range(3)]
    manifest = write_set(tmp_path, shards)
    if case == "damaged header":
        _damage_last_header(tmp_path, manifest)
    problems, summary = verify(str(tmp_path))
    try:
        keys = loader_keys(tmp_path)
    except fmt.CorruptShard as e:
        keys, error = None, str(e)
    assert (not problems) == readable == (keys is not None), (problems, summary)
    if readable:
        assert sorted(keys) == sorted(k for s in shards for k, _ in s)
    else:
        assert "header checksum mismatch" in error
        assert problems == [
            "shard-000001.tar: unreadable (CorruptShard: header checksum mismatch)",
            "manifest.json: num_samples 6, shard entries sum to 6, 5 distinct samples found",
        ]


def test_verify_names_samples_damaged_behind_a_consistent_checksum(tmp_path):
    bad_jpeg = _jpeg(48, 32)[:200]
    shards = [
        [make_sample("a", 0), make_sample("a", 1, frame=bad_jpeg)],
        [make_sample("b", 0, 1, mel_frames=FE.clip_frames(2.0) - 5), make_sample("b", 1, 1)],
        [make_sample("c", 0, label_index=1), make_sample("c", 1, frame=_jpeg(40, 40))],
    ]
    write_set(tmp_path, shards)
    problems, summary = verify(str(tmp_path))
    frames = FE.clip_frames(2.0)
    assert sorted(problems) == sorted(
        [
            "shard-000000.tar: a_1: f01.jpg: undecodable (OSError)",
            f"shard-000001.tar: b_0: mel float16[128, {frames - 5}], expected float16[128, {frames}] finite",
            "shard-000002.tar: c_0: label 'cat' / label_index 1 disagree with the manifest's labels",
            "shard-000002.tar: c_1: f01.jpg: JPEG 40x40, expected JPEG short side 32",
        ]
    ), problems
    assert summary.startswith("FAILED") and summary.endswith("4 problems")


def test_base_plus_ext_groups_as_webdataset():
    from webdataset.tariterators import base_plus_ext

    names = ["a.json", "dir/a.b.c", "d.v1/k_0.mel.npy", "./x.y", "noext", ".hidden", "a/.b", "a."]
    assert [fmt.base_plus_ext(n) for n in names] == [base_plus_ext(n) for n in names]
