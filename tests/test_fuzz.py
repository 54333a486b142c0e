"""A short run of the codec fuzzer (fuzz/fuzz_codec.py), and what it found.

The harness decodes bytes into a chunk plus arguments and runs every codec entry
point on both backends (Rust core, pure twin), demanding equal answers or
exceptions of the same type, and answers equal to a plain reading of
docs/codec.md.  Here it runs over pseudo-random inputs from a fixed seed (no
atheris needed), then, through atheris/libFuzzer when that is installed, as a
short coverage-guided run.  The long run is in the README.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_io import load_backend

HARNESS = Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_codec.py"


@pytest.fixture(scope="module")
def harness():
    load_backend("rust")  # skips (or fails in CI) like every differential test
    spec = importlib.util.spec_from_file_location("fuzz_codec", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", range(4))
def test_random_inputs_agree(harness, seed):
    rng = random.Random(seed)
    for _ in range(1500):
        data = harness.random_input(rng)
        try:
            harness.test_one_input(data)
        except harness.Disagreement as exc:
            pytest.fail(f"{exc}\ninput bytes: {data!r}")


def test_the_harness_can_fail(harness, monkeypatch):
    """A backend that answers differently is caught (the check is not vacuous)."""
    pure = harness.PURE

    class Skewed:
        def __getattr__(self, name):
            return getattr(pure, name)

        @staticmethod
        def is_terminal(chunk):
            return not pure.is_terminal(chunk)

    monkeypatch.setattr(harness, "BACKENDS", (("rust", harness.RUST), ("pure", Skewed())))
    with pytest.raises(harness.Disagreement, match="is_terminal"):
        harness.test_one_input(b"")


def test_reference_readings_agree_on_examples(harness):
    """The harness's own readings of docs/codec.md, on a few known answers."""
    assert harness.ref_parse("data: a\r\ndata: b\r\rid: 1\ndata") == ([("message", "a\nb", "", None)], "1")
    assert harness.ref_patch_nulls('data: {"run_id":null,"seq_id": null}', "R", 7) == (
        'data: {"run_id":"R","seq_id": 7}'
    )
    assert harness.ref_set_event_id("data: a\r\n\r\n\n", "9") == "data: a\r\nid: 9\r\n\r\n\n"
    assert harness.ref_set_event_id("data: a\nid: 1", "9") == "data: a\nid: 9\n\n"
    assert harness.ref_sniff_stop_reason('data: {"message_type":"stop_reason",\ndata: "stop_reason":"x"}') == "x"


def test_short_coverage_guided_run(harness, tmp_path):
    """20,000 libFuzzer runs of the harness through atheris; without atheris,
    the harness's own random mode over as many inputs."""
    have_atheris = importlib.util.find_spec("atheris") is not None
    args = ["-runs=20000", "-seed=1", "-max_len=512"] if have_atheris else ["--random", "20000", "--seed", "7"]
    env = {k: v for k, v in os.environ.items() if k != "FUZZ_LENIENT_ORDER"}  # strict: types must agree
    proc = subprocess.run(
        [sys.executable, str(HARNESS), *args],
        cwd=tmp_path,  # crash-* artifacts land here
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# ---------------------------------------------------------------- findings
# Found by the fuzzer (strict mode, FUZZ_LENIENT_ORDER unset), minimized by hand.
# With two bad arguments the backends raise different exception types:
# * patch_nulls: Rust checks run_id and seq_id before the text's UTF-8, the pure
#   twin checks the text first (UnicodeEncodeError);
# * encode_event: Rust checks the CR/LF/NUL of event/id before retry's type, the
#   pure twin checks every type first ("types first, values second").
# docs/codec.md does not say which check wins; _core.pyi promises
# UnicodeEncodeError for any str that cannot be encoded, and codec.py claims
# to check in the order the Rust core does.  These fail until the two agree.

SURROGATE = "x\ud800"

FINDINGS = [
    ("patch_nulls surrogate text, seq_id -1", "patch_nulls", (SURROGATE, "R", -1), {}),
    ("patch_nulls surrogate text, seq_id 2**64", "patch_nulls", (SURROGATE, "R", 2**64), {}),
    ("patch_nulls surrogate text, seq_id True", "patch_nulls", (SURROGATE, "R", True), {}),
    ("patch_nulls surrogate text, run_id 1", "patch_nulls", (SURROGATE, 1, None), {}),
    ("encode_event id CR, retry True", "encode_event", ("",), {"id": "\r", "retry": True}),
    ("encode_event event LF, retry 1.5", "encode_event", ("x",), {"event": "\n", "retry": 1.5}),
]


@pytest.mark.parametrize(("func", "args", "kwargs"), [f[1:] for f in FINDINGS], ids=[f[0] for f in FINDINGS])
def test_finding_two_bad_arguments_raise_the_same_type(harness, func, args, kwargs):
    got = {name: harness.call(getattr(mod, func), *args, **kwargs) for name, mod in harness.BACKENDS}
    assert got["rust"][0] == got["pure"][0] == "raise"
    assert got["rust"][1] is got["pure"][1], f"rust raises {got['rust'][1].__name__}, pure {got['pure'][1].__name__}"


def test_finding_through_the_harness(harness):
    """The 4-byte input libFuzzer found first: encode_event("", id="\\r", retry=True)."""
    case = harness.decode(bytes([0xB5, 0xFB, 0xC7, 0xF5]))
    assert (case.text, case.event_id, case.seq_id, case.event) == ("", "\r", True, None)
    harness.test_one_input(bytes([0xB5, 0xFB, 0xC7, 0xF5]))
