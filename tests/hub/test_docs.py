"""Every hook is documented with its exact signature and has a test_hook_<name>."""

import inspect
import re
from pathlib import Path

import pytest

from hub import PROJECT_NAME, hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = [
    (name, fn)
    for name, fn in vars(hookspecs).items()
    if callable(fn) and hasattr(fn, f"{PROJECT_NAME}_spec")
]


def test_the_hook_list_is_not_empty():
    assert len(HOOKS) == 15


@pytest.mark.parametrize("name,fn", HOOKS, ids=[n for n, _ in HOOKS])
def test_hook_has_a_docs_section_with_its_exact_signature(name, fn):
    docs = (ROOT / "docs" / "hooks.md").read_text()
    section = re.search(rf"^## {name}\n(.*?)(?=^## |\Z)", docs, re.S | re.M)
    assert section, f"docs/hooks.md has no '## {name}' section"
    assert f"{name}{inspect.signature(fn)}" in section.group(1)


@pytest.mark.parametrize("name,fn", HOOKS, ids=[n for n, _ in HOOKS])
def test_hook_has_a_test(name, fn):
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert re.search(rf"^def test_hook_{name}\b", sources, re.M), f"no test_hook_{name}"


@pytest.mark.parametrize("name,fn", HOOKS, ids=[n for n, _ in HOOKS])
def test_hookspec_docstring_names_every_argument_and_the_return(name, fn):
    doc = inspect.getdoc(fn)
    for arg in inspect.signature(fn).parameters:
        assert f":param {arg}:" in doc
    assert ":return:" in doc


def test_key_provider_is_firstresult_and_says_so():
    assert hookspecs.key_provider.qlora_hub_spec["firstresult"] is True
    assert "firstresult" in inspect.getdoc(hookspecs.key_provider)


def test_cli_reference_is_generated_from_the_current_cli():
    import subprocess
    import sys

    # a fresh process: click caches help options per command object within a process
    proc = subprocess.run(
        [sys.executable, "-m", "hub.cli_reference"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (ROOT / "docs" / "cli.md").read_text() == proc.stdout, (
        "docs/cli.md is stale: run `python -m hub.cli_reference > docs/cli.md`"
    )


def test_docs_site_builds_in_strict_mode():
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            "docs/mkdocs.yml",  # relative: mkdocs refuses an absolute path to a config inside docs_dir
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        cwd=ROOT,  # run as documented: `mkdocs build --strict -f docs/mkdocs.yml` from the repo root
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ROOT / "site" / "hooks" / "index.html").is_file()  # site_dir: ../site (gitignored)
