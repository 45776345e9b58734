"""The manifest's ``dataset`` record: what was listed, built, missing and rejected.

``{"name", "index", "media", "split", "name_pattern", ["class_ids"], "excluded", "listed",
"built", "missing", "broken", "index_errors", "splits": {split: built clips}}`` — counts over
the clips of this build (one part's slice for ``--part-index``; ``shards merge`` adds them up).
``listed`` counts the index entries of the build's split (and ``--classes``) that name a clip,
``index_errors`` the index problems (unusable lines, dropped boxes); ``missing`` clips have no
media, ``broken`` ones have media that yielded no sample. ``excluded``: entries of the split
left out by ``--classes`` (the whole index's count, not a part's).
"""

from __future__ import annotations

from collections import Counter

from preprocess.options import Task

COUNTS = ("listed", "built", "missing", "broken", "index_errors")


def dataset_summary(record: dict, tasks: list[Task], errors: list[dict]) -> dict:
    failed = {e.get("clip_id", e["source"]): e["stage"] for e in errors}
    clips = [t for t in tasks if t.clip is not None and not _rejected(t)]
    built = [t for t in clips if t.name not in failed]
    missing = sum(failed.get(t.name) == "missing" for t in clips)
    return {
        **record,
        "listed": len(clips),
        "built": len(built),
        "missing": missing,
        "broken": len(clips) - len(built) - missing,
        "index_errors": len(tasks) - len(clips),
        "splits": dict(sorted(Counter(t.clip.split or "" for t in built).items())),
    }


def merge_summaries(records: list[dict]) -> dict:
    """One record for merged parts: counts and per-split counts added up."""
    merged = {k: v for k, v in records[0].items() if k not in COUNTS and k != "splits"}
    splits: Counter = Counter()
    for r in records:
        splits.update(r.get("splits", {}))
    merged.update({k: sum(r.get(k, 0) for r in records) for k in COUNTS})
    merged["splits"] = dict(sorted(splits.items()))
    return merged


def summary_line(record: dict) -> str:
    """``vggsound (test): 15446 clips listed, 12000 built, 3400 missing, 46 broken; 2 index
    problems``."""
    split = f" ({record['split']})" if record.get("split") else ""
    return (
        f"{record['name']}{split}: {record['listed']} clips listed, {record['built']} built, "
        f"{record['missing']} missing, {record['broken']} broken; "
        f"{record['index_errors']} index problems (errors.jsonl)"
    )


def _rejected(task: Task) -> bool:
    return task.clip.problem is not None and task.clip.problem[0] == "index"
