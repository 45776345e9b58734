"""``avfusion shards verify``: a complete check of a shard set against its manifest."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from avbase import shardformat as fmt
from avbase.features import AudioFrontend
from avbase.members import MEL_EXT, MEMBERS, META_EXT, WAVE_EXT, MemberError, frame_ext, mask_ext
from avbase.progress import progress
from preprocess.labels import label_problem
from preprocess.shards import read_errors, read_manifest
from preprocess.storage import Store


def verify(url: str, threads: int = 4) -> tuple[list[str], str]:
    """``(problems, summary)``: every shard's size, sha256 and count; every sample decodes and
    matches the preset; errors.jsonl matches ``num_failed``."""
    store = Store(url)
    manifest = read_manifest(store)
    problems: list[str] = []
    keys: set[str] = set()
    check = _SampleCheck(manifest)
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda e: _verify_shard(store, e, check), manifest["shards"])
        for shard_problems, shard_keys in progress(
            results, total=len(manifest["shards"]), unit="shards", desc="shards verify"
        ):
            problems += shard_problems
            problems += [
                f"{k}: key appears twice in the set" for k in keys.intersection(shard_keys)
            ]
            keys.update(shard_keys)
    total = sum(s["num_samples"] for s in manifest["shards"])
    if not total:
        problems.append(f"{fmt.MANIFEST}: the set holds no samples (the loader cannot read it)")
    if total != manifest["num_samples"] or len(keys) != total:
        problems.append(
            f"{fmt.MANIFEST}: num_samples {manifest['num_samples']}, shard entries sum "
            f"to {total}, {len(keys)} distinct samples found"
        )
    problems += stray_shards(store, manifest)
    errors = read_errors(store)
    if len(errors) != manifest["num_failed"] or any(
        set(e) < {"source", "stage", "error"} for e in errors
    ):
        problems.append(
            f"{fmt.ERRORS}: {len(errors)} lines, manifest num_failed "
            f"{manifest['num_failed']} (each line needs source, stage, error)"
        )
    state = "FAILED" if problems else "OK"
    return problems, (
        f"{state}: {url}: {len(keys)} samples in {len(manifest['shards'])} shards, "
        f"{manifest['num_failed']} failed inputs, {len(problems)} problems"
    )


def stray_shards(store: Store, manifest: dict) -> list[str]:
    """A problem line per ``.tar`` file in the set's folder that the manifest does not list."""
    listed = {s["name"] for s in manifest["shards"]}
    return [
        f"{name}: a shard file that {fmt.MANIFEST} does not list (left by another build?)"
        for name in store.list()
        if name.endswith(".tar") and "/" not in name and name not in listed
    ]


def _verify_shard(store: Store, entry: dict, check: _SampleCheck) -> tuple[list[str], list[str]]:
    name, problems, keys = entry["name"], [], []
    try:
        with store.open_read(name) as f:
            reader = fmt.HashingFile(f)
            for sample in fmt.read_samples(reader):
                keys.append(sample[0])
                problems += [f"{name}: {sample[0]}: {p}" for p in check(sample)]
            reader.drain()
    except (fmt.CorruptShard, OSError, ValueError) as e:  # I/O error, malformed tar
        return [f"{name}: unreadable ({type(e).__name__}: {e})"], keys
    for what, got, want in (
        ("bytes", reader.bytes, entry["bytes"]),
        ("sha256", reader.sha.hexdigest(), entry["sha256"]),
        ("num_samples", len(keys), entry["num_samples"]),
    ):
        if got != want:
            problems.append(f"{name}: {what} {got}, manifest says {want}")
    return problems, keys


class _SampleCheck:
    """One sample against the manifest's preset and label list, member by member through
    :data:`avbase.members.MEMBERS` (decode, then the kind's check)."""

    def __init__(self, manifest: dict):
        self.fe = AudioFrontend(**manifest["preset"]["audio"])
        self.frame_size = manifest["preset"]["frame_size"]
        self.labels = manifest.get("labels", [])
        self.multi_label = bool(manifest.get("multi_label"))
        self.members = manifest.get("members", [])

    def __call__(self, sample: fmt.Sample) -> list[str]:
        key, members = sample
        files = dict(members)
        try:
            meta = json.loads(files[META_EXT])
            mel = MEMBERS["mel"].read(files[MEL_EXT])
            want = (self.fe.n_mels, self.fe.clip_frames(meta["clip_seconds"]))
        except (KeyError, TypeError, ValueError) as e:
            return [f"missing or undecodable json/mel or metadata field ({type(e).__name__}: {e})"]
        out = MEMBERS["mel"].check(mel, meta, want)
        if key != f"{meta.get('source_id')}_{meta.get('clip_index')}":
            out.append("key does not match source_id/clip_index")
        return out + self._frames(files, meta) + self._optional(files, meta) + self._labels(meta)

    def _frames(self, files: dict[str, bytes], meta: dict) -> list[str]:
        times = meta.get("frame_times", [])
        frames = [files.get(frame_ext(i)) for i in range(meta.get("n_frames", -1))]
        optional = sum(n.endswith(".mask.png") or n == WAVE_EXT for n in files)
        out = []
        if (
            not frames
            or len(times) != len(frames)
            or len(files) != 2 + len(frames) + optional
            or None in frames
        ):
            out.append(
                f"n_frames {meta.get('n_frames')}, {len(times)} frame_times, "
                f"{len(files) - 2} other members"
            )
        if any(not 0 <= t < meta["clip_seconds"] for t in times):
            out.append(f"frame_times outside [0, {meta['clip_seconds']}): {times}")
        for i, jpg in enumerate(frames):
            if jpg is not None:
                out += _member_problems("frame", jpg, frame_ext(i), self.frame_size)
        return out

    def _optional(self, files: dict[str, bytes], meta: dict) -> list[str]:
        """Masks (each the size of its frame) and the waveform, declared in the manifest."""
        masks = sorted(n for n in files if n.endswith(".mask.png"))
        out = []
        if masks and "mask" not in self.members or WAVE_EXT in files and "flac" not in self.members:
            out.append(f"optional members not declared in the manifest's members {self.members}")
        frames = {mask_ext(i): frame_ext(i) for i in range(meta.get("n_frames", 0))}
        stray = [n for n in masks if n not in frames]
        if stray:
            out.append(f"mask members without a frame: {stray}")
        for name in masks:
            if name in frames and frames[name] in files:
                try:
                    size = MEMBERS["frame"].read(files[frames[name]]).size
                except MemberError:
                    continue  # reported with the frame
                out += _member_problems("mask", files[name], name, size)
        if WAVE_EXT in files:
            out += _member_problems("flac", files[WAVE_EXT], WAVE_EXT, meta)
        return out

    def _labels(self, meta: dict) -> list[str]:
        problem = label_problem(meta, self.labels, self.multi_label)
        return [problem] if problem else []


def _member_problems(kind: str, data: bytes, name: str, *context) -> list[str]:
    """The problems of member ``name`` of ``kind``: undecodable, or its kind's check."""
    member = MEMBERS[kind]
    try:
        value = member.read(data, name)
    except MemberError as e:
        return [str(e)]
    return [f"{name}: {p}" for p in member.check(value, *context)]
