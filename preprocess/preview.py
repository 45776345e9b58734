"""``avfusion shards inspect``: a shard set's metadata, one sample, and a picture of it."""

from __future__ import annotations

import difflib
import io
import json
import posixpath

import numpy as np
from PIL import Image

from avbase import shardformat as fmt
from avbase.errors import AvfusionError
from avbase.members import MEL_EXT, META_EXT, frame_ext
from preprocess.shards import read_manifest
from preprocess.storage import Store

ROW_HEIGHT = 128  # frame thumbnails in the picture (pixels, before the figure scales them)
DPI = 100
COLOUR_LABELS = {"melspec": "log10 mel power", "kaldi_fbank": "log mel energy (Kaldi fbank)"}


def inspect(url: str, key: str | None = None, png: str | None = None) -> str:
    """Text report; with ``key`` (or ``png``) one sample is found and described/drawn."""
    store = Store(url)
    manifest = read_manifest(store)
    lines = [_summary(url, manifest)]
    if key is not None or png is not None:
        sample = find_sample(store, manifest, key)
        lines.append(_describe(sample))
        if png is not None:
            figure(sample, manifest["preset"]["audio"]).savefig(png, dpi=DPI)
            lines.append(f"picture: {png}")
    return "\n".join(lines)


def find_sample(store: Store, manifest: dict, key: str | None) -> fmt.Sample:
    """The sample ``key``; else the first clip of the input whose file name, path or source id
    is ``key``; the first sample when ``None``. ``AvfusionError`` (suggesting the closest keys
    and file names) if there is none."""
    match, match_clip, names = None, None, []
    for entry in manifest["shards"]:
        with store.open_read(entry["name"]) as f:
            for sample in fmt.read_samples(f):
                if key is None or sample[0] == key:
                    return sample
                meta = json.loads(dict(sample[1])[META_EXT])
                source = posixpath.basename(meta["source"])
                if key in (meta["source_id"], meta["source"], source) and (
                    match is None or meta["clip_index"] < match_clip
                ):
                    match, match_clip = sample, meta["clip_index"]
                names += [sample[0], source]
    if match is not None:
        return match
    if not names:
        raise AvfusionError(f"{store.url}: the set has no samples")
    names = list(dict.fromkeys(names))
    closest = difflib.get_close_matches(key, names, n=3, cutoff=0.4) or names[:3]
    raise AvfusionError(
        f"{store.url}: no sample with key {key!r} (expected a sample key, an input's "
        f"file name or source id); closest: {', '.join(closest)}"
    )


def figure(sample: fmt.Sample, audio: dict):
    """A matplotlib ``Figure``: title (key, input file, label); the frames in a row, each
    labelled with its time in the clip; below, the spectrogram ``[n_mels, T]`` on a time axis in
    seconds and a mel-bin axis (low frequencies at the bottom), with a colour bar."""
    from matplotlib.figure import Figure

    key, members = sample
    files = dict(members)
    meta = json.loads(files[META_EXT])
    frames = [
        Image.open(io.BytesIO(files[frame_ext(i)])).convert("RGB") for i in range(meta["n_frames"])
    ]
    frames = [
        f.resize((max(1, round(f.width * ROW_HEIGHT / f.height)), ROW_HEIGHT)) for f in frames
    ]
    mel = np.load(io.BytesIO(files[MEL_EXT])).astype(np.float32)
    fig = Figure(figsize=(10, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(1, 2))
    label = f" [{meta['label']}]" if "label" in meta else ""
    fig.suptitle(
        f"{key}: {posixpath.basename(meta['source'])}{label}, clip {meta['clip_index']} "
        f"from {meta['clip_start']:g} s"
    )
    # 1. frames side by side, ticks at their centres labelled with their times
    top.imshow(np.concatenate([np.asarray(f) for f in frames], axis=1))
    centres = np.cumsum([f.width for f in frames]) - np.array([f.width for f in frames]) / 2
    top.set_xticks(centres, [f"{t:.1f}" for t in meta["frame_times"]])
    top.set_yticks([])
    top.set_xlabel("frame time (s)")
    # 2. spectrogram on the clip's time axis, colour scale clipped to the 1st-99.9th percentiles
    lo, hi = np.percentile(mel, [1, 99.9])
    image = bottom.imshow(
        mel,
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=lo,
        vmax=max(hi, lo + 1e-6),
        extent=(0, mel.shape[1] / meta["mel_fps"], 0, mel.shape[0]),
    )
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("mel bin")
    bottom.set_title(f"{audio['name']} audio front end ({audio['n_mels']} mels)", fontsize="medium")
    fig.colorbar(image, ax=bottom, label=COLOUR_LABELS.get(audio["kind"], audio["kind"]))
    return fig


def _summary(url: str, m: dict) -> str:
    audio = m["preset"]["audio"]
    preset = {k: v for k, v in m["preset"].items() if k != "audio"}
    labels = m.get("labels", [])
    return "\n".join(
        [
            f"{url}: {m['format']} v{m['format_version']}, {m['num_samples']} samples in "
            f"{len(m['shards'])} shards ({sum(s['bytes'] for s in m['shards']) / 1e6:.1f} MB), "
            f"{m['num_failed']} failed inputs",
            f"audio: {audio['name']} ({audio['kind']}, {audio['n_mels']} mels, "
            f"{audio['sample_rate'] / audio['hop_length']:g} frames/s); {json.dumps(preset)}",
            f"labels ({len(labels)}): {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''}",
            f"created: {m['created_by'].get('created')} by avfusion {m['created_by'].get('version')}",
        ]
    )


def _describe(sample: fmt.Sample) -> str:
    key, members = sample
    files = dict(members)
    mel = np.load(io.BytesIO(files[MEL_EXT]))
    sizes = [Image.open(io.BytesIO(data)).size for ext, data in members if ext.endswith(".jpg")]
    return "\n".join(
        [
            f"sample {key}: {json.dumps(json.loads(files[META_EXT]))}",
            f"mel: {mel.dtype}{list(mel.shape)} min {mel.min():.2f} max {mel.max():.2f} "
            f"mean {mel.astype(np.float32).mean():.2f}",
            f"frames: {len(sizes)} JPEG {', '.join(f'{w}x{h}' for w, h in sizes[:3])}"
            f"{' ...' if len(sizes) > 3 else ''}; bytes {sum(len(d) for _, d in members)}",
        ]
    )
