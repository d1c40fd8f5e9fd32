"""requirements/lock.txt stays the whole truth about what gets installed (docs/install.md), offline:
it is a plain pip constraints file; it pins every dependency pyproject.toml declares (the runtime's
and the train and test extras') at a version the declared range admits, and the build backend;
torch and torchaudio are the one release pair pyproject.toml names; and, inside a virtual
environment, everything installed that the lock names is at the locked version, and everything
that emotalk-stream[train,test] pulls in (read from the installed packages' metadata) is locked,
the runtime install without torch.

After changing the dependencies in pyproject.toml: `bash scripts/lock.sh`, then `bash scripts/test.sh`.
"""
from __future__ import annotations

import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
PYPROJECT = ROOT / "pyproject.toml"
PROJECT = "emotalk-stream"
LOCKED_EXTRAS = ("train", "test")
PIN = re.compile(r"(?P<name>[a-z0-9]+(?:-[a-z0-9]+)*)==(?P<version>[0-9][A-Za-z0-9.+!]*)")
IN_VENV = sys.prefix != sys.base_prefix


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        if line.startswith("#"):
            continue
        match = PIN.fullmatch(line)
        assert match, f"{LOCK.name}:{number}: {line!r} is neither `name==version` (canonical name) nor a comment"
        name = match["name"]
        assert name not in pins, f"{LOCK.name}:{number}: {name} pinned twice"
        pins[name] = match["version"]
    return pins


def pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def declared() -> dict[str, list[Requirement]]:
    """The requirements pyproject.toml declares, by group: runtime, then each locked extra."""
    project = pyproject()["project"]
    groups = {"runtime": project["dependencies"]}
    groups.update({extra: project["optional-dependencies"][extra] for extra in LOCKED_EXTRAS})
    return {group: expand(project, [Requirement(r) for r in reqs]) for group, reqs in groups.items()}


def expand(project: dict, reqs: list[Requirement]) -> list[Requirement]:
    """`reqs` with the project's own extras (`emotalk-stream[serve]` in another extra) replaced by theirs."""
    out: list[Requirement] = []
    for req in reqs:
        if canon(req.name) == PROJECT:
            out += expand(project, [Requirement(r) for extra in sorted(req.extras)
                                    for r in project["optional-dependencies"][extra]])
        else:
            out.append(req)
    return out


def installed() -> dict[str, str]:
    versions: dict[str, set[str]] = {}
    for dist in md.distributions():
        versions.setdefault(canon(dist.metadata["Name"]), set()).add(dist.version)
    doubled = {name: v for name, v in versions.items() if len(v) > 1}
    assert not doubled, f"installed twice at different versions (a broken environment): {doubled}"
    return {name: v.pop() for name, v in versions.items()}


def closure(extras: tuple[str, ...]) -> set[str]:
    """Every distribution that installing emotalk-stream[extras] pulls in, from installed metadata."""
    have = installed()
    seen: set[str] = set()
    todo = [(PROJECT, extras)]
    while todo:
        name, wanted = todo.pop()
        for text in md.requires(name) or []:
            req = Requirement(text)
            env = default_environment()
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in ("", *wanted)):
                continue
            dep = canon(req.name)
            assert dep in have, f"{dep} (needed by {name}) is not installed: run bash scripts/test.sh"
            key = (dep, tuple(sorted(req.extras)))
            if key not in seen:
                seen.add(key)
                todo.append((dep, tuple(sorted(req.extras))))
    return {name for name, _ in seen} - {PROJECT}


def test_lock_is_a_plain_constraints_file_with_its_header() -> None:
    text = LOCK.read_text()
    pins = read_lock()
    assert len(pins) >= 10, "the lock pins almost nothing"
    assert PROJECT not in pins, "the lock must not pin the project itself"
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "Written by scripts/lock.sh on " in header, "the header must say which script wrote the lock, and when"
    assert "bash scripts/lock.sh, then bash scripts/test.sh" in header, "the header must say how to move to new versions"


def test_every_declared_dependency_is_pinned_inside_its_range() -> None:
    pins = read_lock()
    for group, reqs in declared().items():
        assert reqs, f"no {group} dependencies declared"
        for req in reqs:
            name = canon(req.name)
            assert name in pins, f"{name} ({group}) is not pinned in {LOCK.name}: run bash scripts/lock.sh"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{name}=={pins[name]} in {LOCK.name} is outside pyproject's {req} ({group}): run bash scripts/lock.sh")


def test_pip_and_the_build_backend_are_pinned() -> None:
    pins = read_lock()
    assert "pip" in pins
    backend = [Requirement(r) for r in pyproject()["build-system"]["requires"]]
    assert [canon(r.name) for r in backend] == ["setuptools"]
    assert backend[0].specifier.contains(pins.get("setuptools", "0")), (
        f"setuptools=={pins.get('setuptools')} does not satisfy the build-system's {backend[0]}")


def test_torch_and_torchaudio_are_one_release_pair() -> None:
    """torchaudio's native library loads only with the torch it was built for (torchaudio 2.11.1 with
    torch 2.11.0: `undefined symbol: torch_exception_get_what_without_backtrace`)."""
    train = {canon(r.name): r for r in declared()["train"]}
    exact = {}
    for name in ("torch", "torchaudio"):
        specs = list(train[name].specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, (
            f"pyproject must pin {name} to one release with ==, not {train[name].specifier}")
        exact[name] = specs[0].version
    assert exact["torch"] == exact["torchaudio"], f"pyproject pins a mismatched pair: {exact}"
    pins = read_lock()
    assert {name: pins.get(name) for name in exact} == exact, "the lock's torch/torchaudio differ from pyproject's"


def test_runtime_dependencies_leave_out_torch() -> None:
    names = {canon(r.name) for r in declared()["runtime"]}
    assert not names & {"torch", "torchaudio"}, "the runtime (quick start) must install without PyTorch"


@pytest.mark.skipif(not IN_VENV, reason="not in a virtual environment: the installed packages are not the project's")
def test_installed_versions_are_the_locked_ones() -> None:
    pins = read_lock()
    have = installed()
    required = {canon(r.name) for group in ("runtime", "test") for r in declared()[group]}
    missing = sorted(required - set(have))
    assert not missing, f"not installed: {missing} (bash scripts/test.sh installs them)"
    wrong = {name: f"{have[name]} installed, {version} locked"
             for name, version in pins.items() if name in have and have[name] != version}
    assert not wrong, f"installed versions differ from {LOCK.name} (source scripts/setup.sh converges): {wrong}"


@pytest.mark.skipif(not IN_VENV, reason="not in a virtual environment: the installed packages are not the project's")
def test_everything_the_installs_pull_in_is_locked() -> None:
    try:
        md.distribution(PROJECT)
    except md.PackageNotFoundError:
        pytest.skip(f"{PROJECT} is not installed in this environment")
    pins = read_lock()
    runtime = closure(())
    stale = sorted({canon(r.name) for r in declared()["runtime"]} - runtime)
    assert not stale, f"the installed {PROJECT} predates pyproject.toml (lacks {stale}): source scripts/setup.sh"
    assert not runtime & {"torch", "torchaudio"}, "the runtime install pulls in PyTorch"
    if not all(name in installed() for name in ("torch", "pytest")):
        pytest.skip("the train and test extras are not installed")
    full = closure(LOCKED_EXTRAS)
    unlocked = sorted(full - set(pins))
    assert not unlocked, f"installed with {PROJECT}[train,test] but not in {LOCK.name}: {unlocked}"
    # and nothing dead: the lock holds what the installs need, pip and the build backend
    dead = sorted(set(pins) - full - {"pip", "setuptools"})
    assert not dead, f"pinned in {LOCK.name} but installed by nothing: {dead} (bash scripts/lock.sh drops them)"
