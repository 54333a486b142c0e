"""A synthetic but realistic SSE stream: the chunks of one LLM agent run.

Used by the codec benchmarks (and meant for a CLI ``bench`` later).  Chunks
look like what an agent server writes into a stream before ``run_id`` and
``seq_id`` are known: ``data: {json}\\n\\n``, about 300 bytes, mostly
``assistant_message`` deltas, with reasoning and tool-call steps in between,
then a stop reason, a usage summary and ``data: [DONE]``.  Deterministic for a
given ``(n, seed)``.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

# Mostly ASCII prose, with the non-ASCII text real model output carries.
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "on",
    "be",
    "this",
    "by",
    "are",
    "from",
    "or",
    "an",
    "at",
    "which",
    "can",
    "stream",
    "event",
    "redis",
    "cursor",
    "replay",
    "client",
    "server",
    "reconnect",
    "latency",
    "token",
    "buffer",
    "chunk",
    "message",
    "agent",
    "tool",
    "result",
    "request",
    "response",
    "value",
    "error",
    "retry",
    "window",
    "offset",
    "résumé",
    "naïve",
    "café",
    "über",
    "señal",
    "—",
    "…",
    "“quoted”",
    "‘single’",
    "日本語",
    "中文",
    "한국어",
    "Ελληνικά",
    "✓",
    "→",
    "🙂",
    "🚀",
]
_NON_ASCII_SHARE = 0.15  # chance a delta picks from the whole list rather than ASCII words
_ASCII_WORDS = [w for w in _WORDS if w.isascii()]
_TOOLS = ("web_search", "run_code", "read_file", "send_message")

# Most servers write compact JSON; some (json.dumps defaults) put a space after , and :.
_COMPACT = (",", ":")
_SPACED = (", ", ": ")


def _text(rng: random.Random, lo: int, hi: int) -> str:
    words = _WORDS if rng.random() < _NON_ASCII_SHARE else _ASCII_WORDS
    text = " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))
    return " " + text if rng.random() < 0.7 else text.capitalize() + ". "


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _chunk(payload: dict[str, Any], rng: random.Random) -> str:
    separators = _SPACED if rng.random() < 0.2 else _COMPACT
    return f"data: {json.dumps(payload, separators=separators, ensure_ascii=False)}\n\n"


def llm_run_chunks(n: int = 10_000, seed: int = 0) -> list[str]:
    """``n`` chunks of one agent run (``n >= 3``), the last three being the stop
    reason, the usage summary and ``data: [DONE]``."""
    if n < 3:
        raise ValueError("n must be at least 3")
    rng = random.Random(seed)
    clock = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
    body: list[str] = []
    steps = 0
    while len(body) < n - 3:
        steps += 1
        # One step: some reasoning, then either a tool call or an answer,
        # each message streamed as deltas that share its id and otid.
        act = "tool_call_message" if rng.random() < 0.3 else "assistant_message"
        for kind in ("reasoning_message", act):
            message_id, otid = f"message-{_uuid(rng)}", _uuid(rng)
            deltas = rng.randint(3, 12) if kind != "assistant_message" else rng.randint(20, 80)
            call_id, tool = f"call_{_uuid(rng).replace('-', '')[:24]}", rng.choice(_TOOLS)
            for i in range(deltas):
                clock += timedelta(milliseconds=rng.randint(5, 60))
                payload: dict[str, Any] = {
                    "id": message_id,
                    "date": clock.isoformat(),
                    "run_id": None,
                    "seq_id": None,
                    "message_type": kind,
                }
                if kind == "reasoning_message":
                    payload |= {"source": "reasoner_model", "reasoning": _text(rng, 4, 14)}
                elif kind == "tool_call_message":
                    arguments = json.dumps({"query": _text(rng, 1, 4)}) if i == 0 else _text(rng, 1, 4)
                    payload["tool_call"] = {
                        "name": tool if i == 0 else None,
                        "arguments": arguments,
                        "tool_call_id": call_id,
                    }
                else:
                    payload["content"] = _text(rng, 4, 16)
                payload["otid"] = otid
                body.append(_chunk(payload, rng))
    del body[n - 3 :]
    tokens = 4 * len(body)  # a delta is a few tokens
    usage = {
        "message_type": "usage_statistics",
        "completion_tokens": tokens,
        "prompt_tokens": 1800 * steps,
        "total_tokens": tokens + 1800 * steps,
        "step_count": steps,
        "run_ids": None,
    }
    return [
        *body,
        _chunk({"message_type": "stop_reason", "stop_reason": "end_turn"}, rng),
        _chunk(usage, rng),
        "data: [DONE]\n\n",
    ]
