"""Packaging: pyproject.toml declares what the code imports, the dev requirements cover the extras,
the build never asks for a second torch, and the console script resolves."""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires

from conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
# the runtime code's folders that only an extra needs; everything else is the core
EXTRA_OF = {"evaluate": "eval", "serve": "serve", "cli/serve.py": "serve", "cli/evaluate.py": "eval",
            "distributed.py": "ray", "training": "eval"}
BENCH_ONLY = {"tensorflow"}  # evaluate/trackers.py imports it lazily, with a clear error naming it
DIST_OF_MODULE = {"dlib": "dlib-bin"}  # dlib-bin installs `dlib` without naming it in its metadata


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _with_their_requirements(reqs) -> set[str]:
    names = {_name(r) for r in reqs}
    for n in list(names):
        try:
            names |= {_name(r) for r in requires(n) or () if "extra ==" not in r}
        except PackageNotFoundError:
            pass
    return names


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the package files importing it (at module level or inside functions)."""
    found: dict[str, set[str]] = {}
    for path in (REPO / "fawkes_fast").rglob("*.py"):
        rel = path.relative_to(REPO / "fawkes_fast").as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"fawkes_fast"}:
                found.setdefault(top, set()).add(rel)
    return found


def _extra_for(rel: str) -> str | None:
    return next((extra for prefix, extra in EXTRA_OF.items() if rel == prefix or rel.startswith(prefix + "/")), None)


def test_every_import_is_declared_and_the_core_needs_no_extra():
    dists = packages_distributions()
    core = _with_their_requirements(PROJECT["dependencies"])
    extras = {k: core | _with_their_requirements(v) for k, v in PROJECT["optional-dependencies"].items()}
    missing = []
    for module, files in sorted(_third_party_imports().items()):
        if module in BENCH_ONLY:
            continue
        names = {DIST_OF_MODULE.get(module, d).lower().replace("_", "-") for d in dists.get(module, [module])}
        for rel in files:
            extra = _extra_for(rel)
            if not names & (extras[extra] if extra else core):
                missing.append(f"{module} ({'/'.join(sorted(names))}) imported by {rel}, needs "
                               f"{'the ' + extra + ' extra' if extra else 'the core dependencies'}")
    assert not missing, "\n".join(missing)


def test_dev_requirements_cover_every_extra():
    lines = (REPO / "requirements-dev.txt").read_text().splitlines()
    dev = {_name(line) for line in lines if line.strip() and not line.startswith("#")}
    for extra, reqs in PROJECT["optional-dependencies"].items():
        assert {_name(r) for r in reqs} <= dev, extra


def test_build_needs_no_second_torch_and_no_wheel_package():
    build = PYPROJECT["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    assert not any(_name(r) in ("torch", "wheel") for r in build["requires"])
    assert "setuptools>=70.1" in build["requires"]  # builds wheels without the `wheel` package
    assert "setuptools>=70.1" in (REPO / "requirements.txt").read_text().split()  # --no-build-isolation


def test_console_script_resolves():
    module, func = PROJECT["scripts"]["fawkes-fast"].split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_importing_the_package_and_jobs_stays_cheap():
    code = "import sys, fawkes_fast, fawkes_fast.jobs; print(sorted({'torch', 'cv2', 'dlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ci_runs_the_readme_in_a_plain_venv_and_in_one_with_wheel():
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    assert "<!-- ci:install -->" in readme and "<!-- ci:test -->" in readme
    assert ci.count("fresh_venv ") == 2 and "pip install -q wheel" in ci
    assert ci.count("run_block install") == 2 and ci.count("run_block test") == 1
