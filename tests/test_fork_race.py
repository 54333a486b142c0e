"""Forked writers racing on one run (issue 10, defect 1), both engines, a real server.

200 pairs per case: two children forked from the test process, each with its
own writer engine on the same run id, write a few chunks (flushing half way)
and ``complete()``.  The pairs start together in waves (a gate pipe both
children of a wave block on, opened once every child is connected), so the
two writers of a pair really race for seq 1 and the seqs after it.

Two cases: ``import-only`` (each child builds a ``StreamWriter`` of its own
after the fork: the parent had only imported ``sse_redis``'s writer), and
``after-use`` (the parent used a writer before forking and the children use
that very object: each child builds its own engine on first use).

What must hold: writer ids (read back from a private run each child writes)
are unique across all 400 children; every chunk a child saw acknowledged
(``flush()``/``complete()`` returned) is stored exactly once, under the seq
its ``write`` returned, by that child; each run's stream is seq 1..n with one
terminal at its end; a child whose chunks are not all stored raised
``StaleWriterError`` (or ``RunClosedError`` when the other had already
completed the run), never returned normally.  Prints one ``FAULTS`` line per
case (see ``test_faults.py``): ``sent`` counts acknowledged chunks,
``unexpected`` stored chunks no one saw acknowledged (a loser's batch that
landed before its next one was refused: legitimate, never asserted 0).
"""

from __future__ import annotations

import json
import os
import select
import time
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest

from fixtures_io import wait_child
from sse_redis import RunClosedError, StaleWriterError, StreamWriter
from test_faults import key_of, report, tally

PAIRS = 200
WAVE = 25  # pairs started together: 50 children at once
CHUNKS = 4  # per child, then [DONE]
DEADLINE = 60.0  # "does not hang" bound of one case, never a speed claim


def data_of(child: int, j: int) -> str:
    return f'data: {{"child": {child}, "j": {j}, "run_id": null}}\n\n'


def parse(data: str) -> tuple[int, int] | None:
    """``(child, j)`` of a chunk written by ``data_of``; ``None`` for a terminal."""
    if not data.startswith('data: {"child"'):
        return None
    body = json.loads(data[6:])
    return body["child"], body["j"]


def child_main(
    get_writer: Callable[[], StreamWriter], child: int, run: str, own_run: str, ready_w: int, gate_r: int, out_path: str
) -> None:
    """The forked child's whole life: never returns (``os._exit``)."""
    result: dict[str, Any] = {"child": child, "written": [], "acked": [], "outcome": None}
    code = 0
    try:
        w = get_writer()
        w.write(own_run, "data: id\n\n")  # the engine's id, stored with the entry
        w.flush(run_id=own_run)
        os.write(ready_w, b"r")
        os.read(gate_r, 1)  # EOF once the whole wave is connected: go
        pending: list[tuple[int, str]] = []
        try:
            for j in range(1, CHUNKS + 1):
                data = data_of(child, j)
                seq = w.write(run, data)
                result["written"].append([seq, data])
                pending.append((seq, data))
                if j == CHUNKS // 2:
                    w.flush(run_id=run)
                    result["acked"] += pending
                    pending = []
            result["done"] = w.complete(run)
            result["acked"] += pending
            result["outcome"] = "completed" if result["done"] is not None else "superseded"
        except (StaleWriterError, RunClosedError) as exc:
            result["outcome"] = type(exc).__name__
            result["message"] = str(exc)
    except BaseException as exc:
        result["outcome"] = "other"
        result["message"] = repr(exc)
        code = 1
    finally:
        try:
            with open(out_path + ".tmp", "w", encoding="utf-8") as out:
                json.dump(result, out)
            os.rename(out_path + ".tmp", out_path)
        finally:
            os._exit(code)


def run_wave(
    get_writer: Callable[[], StreamWriter], first_child: int, runs: list[str], own_runs: list[str], tmp: str
) -> list[dict[str, Any]]:
    """Fork two children per run, open the gate once all are connected, reap them."""
    ready_r, ready_w = os.pipe()
    gate_r, gate_w = os.pipe()
    pids: list[int] = []
    try:
        for p, run in enumerate(runs):
            for side in range(2):
                child = first_child + 2 * p + side
                pid = os.fork()
                if pid == 0:
                    os.close(ready_r)
                    os.close(gate_w)  # else the gate never reads EOF
                    child_main(
                        get_writer, child, run, own_runs[child], ready_w, gate_r, os.path.join(tmp, f"{child}.json")
                    )
                pids.append(pid)
        os.close(ready_w)
        ready_w = -1
        want, got, deadline = len(pids), 0, time.monotonic() + 20.0
        while got < want:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([ready_r], [], [], max(left, 0))
            if not readable:
                break
            chunk = os.read(ready_r, want)
            if not chunk:
                break  # every child closed its end: some died before getting ready
            got += len(chunk)
    finally:
        os.close(gate_w)  # go (or, on failure, let every child run out)
        os.close(gate_r)
        os.close(ready_r)
        if ready_w != -1:
            os.close(ready_w)
        statuses = [wait_child(pid, timeout=DEADLINE) for pid in pids]
    results = []
    for i, status in enumerate(statuses):
        path = os.path.join(tmp, f"{first_child + i}.json")
        if not os.path.exists(path):
            pytest.fail(f"child {first_child + i} left no result (exit status {status})")
        with open(path, encoding="utf-8") as f:
            results.append(json.load(f))
    assert got == want, f"only {got} of {want} children got ready"
    return results


@pytest.mark.parametrize("case", ["import-only", "after-use"])
def test_forked_writer_pairs_race_on_one_run(backend, redis_url, make_writer, plain_client, run_id, tmp_path, case):
    r = plain_client(redis_url)
    runs = [run_id() for _ in range(PAIRS)]
    own_runs = [run_id() for _ in range(2 * PAIRS)]
    if case == "after-use":
        parent = make_writer(redis_url, flush_size=2)
        parent_run = run_id()
        parent.write(parent_run, data_of(-1, 1))
        parent.flush()

        def get_writer() -> StreamWriter:
            return parent  # the inherited object: a child builds its own engine on first use
    else:

        def get_writer() -> StreamWriter:
            return StreamWriter(redis_url, backend=backend, flush_size=2)

    started = time.monotonic()
    results: list[dict[str, Any]] = []
    for start in range(0, PAIRS, WAVE):
        results += run_wave(get_writer, 2 * start, runs[start : start + WAVE], own_runs, str(tmp_path))
        assert time.monotonic() - started < DEADLINE, "the race took too long (hung children?)"
    took = time.monotonic() - started

    # Writer ids, from each child's private run.
    ids = []
    for own in own_runs:
        entries = r.xrange(key_of(own))
        ids.append(entries[0][1]["writer"] if entries else None)
    id_counts = Counter(ids)

    outcomes = Counter(res["outcome"] for res in results)
    acked_ids: list[int] = []  # child * 100 + j, for tally
    stored_ids: list[int] = []
    problems: list[str] = []
    both_completed = not_ended = 0
    for p, run in enumerate(runs):
        pair = results[2 * p : 2 * p + 2]
        entries = r.xrange(key_of(run))
        seqs = [int(fields["seq_id"]) for _, fields in entries]
        by_seq = {int(fields["seq_id"]): fields for _, fields in entries}
        terminals = [s for s in seqs if by_seq[s].get("complete") == "true"]
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"{run}: stored seqs {seqs}")
        if terminals != seqs[-1:]:
            not_ended += 1
            problems.append(f"{run}: terminals at {terminals} of {seqs}")
        pair_ids = {ids[res["child"]] for res in pair}
        # A writer's chunk is only ever stored right after its own previous one:
        # along the stream the writer changes at most once (a child continuing
        # after the other's chunks, as a new writer does), each child's chunks
        # are its j = 1, 2, ... without a gap, and a terminal is its writer's own.
        order = [by_seq[s].get("writer") for s in seqs]
        switches = sum(1 for a, b in pairwise(order) if a != b)
        if switches > 1:
            along = [
                (ids.index(w) if w in ids else w, (parse(by_seq[s]["data"]) or ("T",))[-1])
                for s, w in zip(seqs, order, strict=True)
            ]
            problems.append(f"{run}: writers interleave along the stream: {along}")
        for res in pair:
            js = [
                parse(f["data"])[1]
                for f in by_seq.values()
                if f.get("writer") == ids[res["child"]] and parse(f["data"])
            ]
            if js != list(range(1, len(js) + 1)):
                problems.append(f"{run}: child {res['child']}'s stored chunks are j={js}")
        for fields in by_seq.values():
            if fields.get("writer") not in pair_ids:
                problems.append(f"{run}: an entry by {fields.get('writer')}, not by either child")
            parsed = parse(fields["data"])
            if parsed is not None:
                stored_ids.append(parsed[0] * 100 + parsed[1])
        for res in pair:
            mine = ids[res["child"]]
            for seq, data in res["acked"]:
                acked_ids.append(res["child"] * 100 + parse(data)[1])
                fields = by_seq.get(seq)
                if fields is None or fields["data"] != data or fields.get("writer") != mine:
                    problems.append(f"{run}: child {res['child']}'s acknowledged seq {seq} holds {fields}")
            if res["outcome"] in ("completed", "superseded"):
                # A normal return: every chunk it wrote is stored, its own terminal too when it said so.
                stored_mine = [s for s, f in by_seq.items() if f.get("writer") == mine and parse(f["data"])]
                if len(stored_mine) != CHUNKS:
                    problems.append(
                        f"{run}: child {res['child']} returned normally with "
                        f"{len(stored_mine)} of {CHUNKS} chunks stored"
                    )
                if res["outcome"] == "completed":
                    done = by_seq.get(res["done"])
                    if done is None or done.get("complete") != "true" or done.get("writer") != mine:
                        problems.append(f"{run}: child {res['child']}'s complete() said {res['done']}: {done}")
        if sum(res["outcome"] == "completed" for res in pair) > 1:
            both_completed += 1

    counts = tally(acked_ids, stored_ids)
    report(
        f"fork-race-{case}",
        backend,
        sent=len(acked_ids),
        counts=counts,
        pairs=PAIRS,
        children=len(results),
        unique_writer_ids=len([i for i in id_counts if i is not None]),
        completed=outcomes["completed"],
        superseded=outcomes["superseded"],
        stale=outcomes["StaleWriterError"],
        closed=outcomes["RunClosedError"],
        other=outcomes["other"],
        both_completed=both_completed,
        took_s=round(took, 2),
    )
    others = [res for res in results if res["outcome"] == "other"]
    assert not others, others[:3]
    assert None not in id_counts, "a child stored no id entry"
    assert len(id_counts) == 2 * PAIRS, f"writer ids shared: {[i for i, n in id_counts.items() if n > 1][:5]}"
    assert not problems, problems[:10]
    assert (counts["lost"], counts["duplicated"]) == (0, 0)
    assert both_completed == 0
    assert not_ended == 0
    # Each pair has one winner; the other child lost the race or came second.
    assert outcomes["completed"] == PAIRS
    assert outcomes["StaleWriterError"] + outcomes["RunClosedError"] + outcomes["superseded"] == PAIRS
    assert outcomes["StaleWriterError"] > 0, "no pair raced (the gate did not line the children up)"
    if case == "after-use":
        assert parent.write(parent_run, data_of(-1, 2)) == 2  # the parent's engine is untouched
        parent.flush()
        assert [int(f["seq_id"]) for _, f in r.xrange(key_of(parent_run))] == [1, 2]
    pipe = r.pipeline(transaction=False)
    for key in runs + own_runs:
        pipe.delete(key_of(key))
    pipe.execute()
