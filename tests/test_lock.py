"""requirements.lock (what `make venv` installs with --no-deps) and requirements-cuda.lock (cloud VMs)
pin every dependency pyproject.toml names: a dependency added without `make lock` fails here."""

from __future__ import annotations

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def pinned(lock: str) -> dict[str, list[str]]:
    pins: dict[str, list[str]] = {}
    for line in (REPO / lock).read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            req = Requirement(line)
            pins.setdefault(canonicalize_name(req.name), []).append(str(req.specifier))
    return pins


@pytest.mark.parametrize("lock, extras", [("requirements.lock", ["dev"]), ("requirements-cuda.lock", [])])
def test_lock_pins_every_dependency(lock, extras):
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (dev and CI)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in extras for r in project["optional-dependencies"][extra]]
    pins = pinned(lock)
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in pins]
    assert not missing, f"{lock} lacks {missing}: run `make lock`"
    for r in wanted:  # each pin satisfies pyproject's range (the local +cpu label aside)
        versions = [s.removeprefix("==").split("+")[0] for s in pins[canonicalize_name(r.name)]]
        assert any(r.specifier.contains(v, prereleases=True) for v in versions), (lock, str(r), versions)
