"""Build-time shuffle: seeded, order-independent, and mixing the clips of many sources."""

from __future__ import annotations

from math import comb

from preprocess.shuffle import WindowBuffer, shuffled, windows


def test_input_order_depends_only_on_the_seed_and_the_set():
    paths = [f"/videos/class{c}/v{i}.mp4" for c in range(4) for i in range(10)]
    order = shuffled(paths, seed=0)
    assert sorted(order) == sorted(paths) and order != paths
    assert shuffled(paths[::-1], seed=0) == order
    assert shuffled(paths, seed=1) != order
    assert [list(w) for w in windows(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]


def _mean_distinct_sources(samples, block: int) -> float:
    counts = [
        len({key.split("_")[0] for key, _ in samples[i : i + block]})
        for i in range(0, len(samples), block)
    ]
    return sum(counts) / len(counts)


def test_window_permutation_is_seeded_resumable_and_mixes_sources():
    sources, clips, block = 40, 5, 20  # a list sorted by source, 5 clips each
    samples = [
        (f"v{v:02d}_{k}", [("json", f"{v} {k}".encode()), ("mel.npy", bytes(v * k))])
        for v in range(sources)
        for k in range(clips)
    ]
    with WindowBuffer() as window:
        for s in samples:
            window.add(s)
        first, again, other = (list(window.samples(seed)) for seed in (0, 0, 1))
        plain, rest = list(window.samples(None)), list(window.samples(0, skip=150))
    assert first == again and first != other and sorted(first) == sorted(samples)
    assert plain == samples and rest == first[150:]
    # a uniformly random block of 20 of the 200 clips misses a given source with
    # probability C(195, 20) / C(200, 20) (hypergeometric)
    uniform = sources * (1 - comb(sources * clips - clips, block) / comb(sources * clips, block))
    assert _mean_distinct_sources(first, block) >= 0.8 * uniform
    assert _mean_distinct_sources(plain, block) == block / clips  # 4: input order
