"""`emotalk-reproduce` refuses up front what it cannot finish: every speech engine its corpora need
is found before any corpus is made, so Kokoro's voices missing (the bundled recipe's second stage
hears them, and their corpus comes last) stop it before hours of corpora and training."""
from __future__ import annotations

from pathlib import Path

import pytest

from emotalk_stream.tools import reproduce_default
from emotalk_stream.training import kokoro_voice


def test_the_bundled_recipe_without_kokoros_voices_stops_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kokoro_voice, "default_cache", lambda: tmp_path / "no-kokoro")
    work = tmp_path / "work"
    assert reproduce_default.main(["--work", str(work)]) == 2
    err = capsys.readouterr().err
    problem = kokoro_voice.missing()  # the files (or, where the kokoro extra is absent, its packages)
    assert problem and problem in err and "Traceback" not in err
    assert list(work.iterdir()) == []  # no corpus begun
