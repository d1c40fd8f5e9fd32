"""The fuzz targets of tools/fuzz.py on a CI budget (the 100 000-input run is `emotalk-fuzz`), and
proof that the harness catches what it is for."""
from __future__ import annotations

import json

import numpy as np
import pytest

from emotalk_stream.streamer.sources import StdinSource
from emotalk_stream.tools.fuzz import TARGETS, main, run_targets

EXAMPLES = 600  # per target: the file runs in well under a minute on two cores


@pytest.mark.parametrize("target", list(TARGETS))
def test_no_input_breaks_the_target(target: str) -> None:
    outcome = run_targets([target], EXAMPLES)[target]
    assert outcome.failures == 0, outcome.first_failures
    assert outcome.examples == EXAMPLES


def test_a_warning_in_the_pipe_reader_thread_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def mixed_before_cleaning(self: StdinSource, pcm: np.ndarray) -> np.ndarray:
        """The reader as it was: NaN warned on stderr, huge floats overflowed the mean."""
        audio = pcm.astype(np.float32) * np.float32(self._scale)
        if self.channels > 1:
            audio = audio.reshape(-1, self.channels).mean(axis=1)
        return np.clip(np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)

    monkeypatch.setattr(StdinSource, "_to_mono", mixed_before_cleaning)
    outcome = run_targets(["pcm"], EXAMPLES)["pcm"]
    assert outcome.failures > 0
    assert outcome.first_failures[0].startswith("AssertionError: warning:")


def test_the_command_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--examples", "40", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["examples"], report["failures"]) == (40, 0)
    assert {name: t["examples"] for name, t in report["targets"].items()} == {name: 10 for name in TARGETS}


def test_fewer_examples_than_targets_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--examples", "3"]) == 2
    assert capsys.readouterr().err == "emotalk-fuzz: error: --examples 3: give at least one per target (4)\n"
