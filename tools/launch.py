"""Console entry points of the commands that need an extra (PyTorch for `train`, hypothesis for
`test`).

The runtime install has neither; there these commands say so in one line (exit 2) instead of
dying on an import with a traceback. `--version` answers without importing anything heavy.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from ..training.errors import TRAINING_MODULES, missing_modules, version_line


def _entry(prog: str, module: str, needs: tuple[str, ...] = TRAINING_MODULES,
           extra: str = "train") -> Callable[[], int]:
    def main() -> int:
        if "--version" in sys.argv[1:]:
            print(version_line(prog))
            return 0
        problem = missing_modules(needs, extra)
        if problem:
            print(f"{prog}: error: {prog} needs {problem}", file=sys.stderr)
            return 2
        return importlib.import_module(module).main()
    main.__doc__ = f"`{prog}` ({module}), once what it needs is known to be installed."
    return main


corpus = _entry("emotalk-corpus", "emotalk_stream.training.corpus")
train = _entry("emotalk-train", "emotalk_stream.training.trainer")
evaluate = _entry("emotalk-eval", "emotalk_stream.training.evaluate")
import_official = _entry("emotalk-import", "emotalk_stream.training.importer")
reproduce = _entry("emotalk-reproduce", "emotalk_stream.tools.reproduce_default")
export = _entry("emotalk-export", "emotalk_stream.engine.export")
bench = _entry("emotalk-bench", "emotalk_stream.tools.bench")
latency = _entry("emotalk-latency", "emotalk_stream.tools.latency")
fuzz = _entry("emotalk-fuzz", "emotalk_stream.tools.fuzz", ("hypothesis",), "test")
loadtest = _entry("emotalk-loadtest", "emotalk_stream.tools.loadtest", ())
