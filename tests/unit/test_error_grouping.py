"""Error grouping judged against a corpus of realistic production errors.

tests/data/error_grouping_corpus.json holds Python and JavaScript error events as OpenTelemetry
would deliver them (exception type, message, stacktrace, and the otel_bridge.fingerprint attribute
as ``fingerprint``), organised in families: events of one family are the same bug and must share a
group, events of different families are different bugs and must not. Over every pair of events,
a true pair is two events of one family and a predicted pair is two events with one fingerprint;
pairwise precision and recall must both reach MIN_SCORE. The corpus's ``must_not`` list names the
hard near-misses (same type or same message or same library frames, but a different bug), and
every one of those must get two different fingerprints.

Run with ``pytest -s`` to see the scores and, when they fall short, the offending pairs.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from otel_bridge.exporters.fingerprint import fingerprint

CORPUS_PATH = Path(__file__).parent.parent / "data" / "error_grouping_corpus.json"
MIN_SCORE = 0.95

Event = dict[str, Any]


def _load_corpus() -> dict[str, Any]:
    corpus: dict[str, Any] = json.loads(CORPUS_PATH.read_text(encoding="utf-8"))
    ids = [event["id"] for event in corpus["events"]]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"duplicate event ids in the corpus: {duplicates}"
    return corpus


CORPUS = _load_corpus()
EVENTS: list[Event] = CORPUS["events"]
BY_ID: dict[str, Event] = {event["id"]: event for event in EVENTS}


@pytest.fixture(scope="module")
def fingerprints() -> dict[str, str]:
    """Each event's fingerprint, by event id (stacktrace None when the event has none)."""
    return {
        event["id"]: fingerprint(
            event["exception_type"], event["message"], event.get("stacktrace"),
            event.get("fingerprint"),
        )
        for event in EVENTS
    }  # fmt: skip


def _describe(a: Event, b: Event, fps: dict[str, str]) -> str:
    return (
        f"  {a['id']} [{a['family']}] {fps[a['id']]}\n"
        f"  {b['id']} [{b['family']}] {fps[b['id']]}"
    )


def test_corpus_precision_and_recall(fingerprints: dict[str, str]) -> None:
    true_pos: list[tuple[Event, Event]] = []
    false_pos: list[tuple[Event, Event]] = []
    false_neg: list[tuple[Event, Event]] = []
    for a, b in itertools.combinations(EVENTS, 2):
        same_family = a["family"] == b["family"]
        same_group = fingerprints[a["id"]] == fingerprints[b["id"]]
        if same_family and same_group:
            true_pos.append((a, b))
        elif same_group:
            false_pos.append((a, b))
        elif same_family:
            false_neg.append((a, b))

    tp = len(true_pos)
    precision = tp / (tp + len(false_pos)) if true_pos or false_pos else 1.0
    recall = tp / (tp + len(false_neg)) if true_pos or false_neg else 1.0
    families = len({event["family"] for event in EVENTS})
    groups = len(set(fingerprints.values()))
    print(
        f"\nerror grouping: {len(EVENTS)} events, {families} families, {groups} groups; "
        f"precision {precision:.4f} ({tp} TP, {len(false_pos)} FP), "
        f"recall {recall:.4f} ({tp} TP, {len(false_neg)} FN)"
    )
    if precision < 1.0:
        print(f"false merges ({len(false_pos)} pairs, different families, same fingerprint):")
        for a, b in false_pos:
            print(_describe(a, b, fingerprints))
    if recall < 1.0:
        print(f"false splits ({len(false_neg)} pairs, same family, different fingerprints):")
        for a, b in false_neg:
            print(_describe(a, b, fingerprints))

    assert precision >= MIN_SCORE, f"precision {precision:.4f} < {MIN_SCORE}"
    assert recall >= MIN_SCORE, f"recall {recall:.4f} < {MIN_SCORE}"


def test_near_misses_get_different_fingerprints(fingerprints: dict[str, str]) -> None:
    pairs: list[list[str]] = CORPUS["must_not"]
    for a_id, b_id in pairs:
        assert a_id in BY_ID and b_id in BY_ID, f"must_not names an unknown event: {a_id}, {b_id}"
        assert BY_ID[a_id]["family"] != BY_ID[b_id]["family"], f"{a_id}, {b_id}: one family"
    merged = [(BY_ID[a], BY_ID[b]) for a, b in pairs if fingerprints[a] == fingerprints[b]]
    if merged:
        print(f"\nnear-misses merged ({len(merged)} of {len(pairs)}):")
        for a, b in merged:
            print(_describe(a, b, fingerprints))
    assert not merged, f"{len(merged)} must_not pairs share a fingerprint: " + ", ".join(
        f"{a['id']}/{b['id']}" for a, b in merged
    )
