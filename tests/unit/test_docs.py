"""The documentation cannot drift from the code it describes.

The options page is generated from ``geows.config.Config`` by
``docs/gen_options.py``; the committed page must be what the generator
writes today. The uWSGI compatibility matrix must name every function and
attribute the ``uwsgi`` adapter exports. Links between pages must resolve.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = ROOT / "docs"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_options", DOCS / "gen_options.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_options_page_is_what_the_generator_writes_from_config():
    gen = load_generator()
    page = gen.PAGE.read_text(encoding="utf-8")
    assert gen.splice(page, gen.render()) == page, (
        "docs/reference/options.rst is stale: run python docs/gen_options.py"
    )


def test_the_options_page_names_every_option_and_alias():
    from dataclasses import fields

    from geows.config import Config

    page = (DOCS / "reference" / "options.rst").read_text(encoding="utf-8")
    for f in fields(Config):
        for name in [f.name.replace("_", "-"), *f.metadata["aliases"]]:
            assert f"``--{name}``" in page, name


def test_the_generator_check_mode_passes_on_the_committed_page():
    assert load_generator().main(["--check"]) == 0


def test_the_uwsgi_matrix_lists_every_name_the_adapter_exports():
    adapter = importlib.import_module("geows.uwsgi_compat")
    matrix = (DOCS / "reference" / "uwsgi-compat.rst").read_text(encoding="utf-8")
    missing = [
        name
        for name in adapter.__all__
        if not re.search(rf"``(?:uwsgi\.)?{re.escape(name)}\b", matrix)
    ]
    assert not missing, f"add to docs/reference/uwsgi-compat.rst: {missing}"


@pytest.mark.parametrize(
    "page", sorted(DOCS.rglob("*.rst")), ids=lambda p: str(p.relative_to(DOCS))
)
def test_links_between_pages_point_to_existing_files(page: Path):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"<([^<>\s]+\.rst)>`__?", text):
        assert (page.parent / target).resolve().is_file(), f"{page}: {target}"
