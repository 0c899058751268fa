"""The wheel as PyPI would get it: metadata, URLs, and a description whose links work there."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = "https://github.com/pqrun/pqrun"
# A markdown link or image whose target has no scheme: fine on GitHub, dead on PyPI.
RELATIVE_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")
ABSOLUTE_LINK = re.compile(
    r"\]\((?:https://github\.com/pqrun/pqrun/blob/main/"
    r"|https://raw\.githubusercontent\.com/pqrun/pqrun/main/)([^)\s#]+)"
)


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Message:
    """METADATA of a wheel built from this tree, as `python -m build` would build it."""
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("pqrun-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(archive.read(name).decode())


@pytest.mark.slow
def test_the_description_has_no_relative_link(metadata: Message) -> None:
    description = metadata.get_payload()
    assert isinstance(description, str)
    assert description.startswith("# pqrun")
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert RELATIVE_LINK.findall(description) == []
    # Each link made absolute names a file of the repository, so none of them is dead.
    targets = ABSOLUTE_LINK.findall(description)
    assert "docs/migrating.md" in targets
    assert "CHANGELOG.md" in targets
    assert "docs/dashboard.png" in targets
    assert [t for t in targets if not (ROOT / t).exists()] == []


@pytest.mark.slow
def test_urls_classifiers_and_no_development_extras(metadata: Message) -> None:
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL", []))
    assert urls["Homepage"] == REPOSITORY
    assert urls["Issues"] == f"{REPOSITORY}/issues"
    assert urls["Changelog"] == f"{REPOSITORY}/blob/main/CHANGELOG.md"
    assert urls["Documentation"].startswith(REPOSITORY)
    classifiers = set(metadata.get_all("Classifier", []))
    assert {
        "Development Status :: 4 - Beta",
        "Framework :: AsyncIO",
        "Framework :: FastAPI",
        "Topic :: Database",
        "Typing :: Typed",
        "Programming Language :: Python :: 3.11",
    } <= classifiers
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["License-Expression"] == "MIT"
    extras = set(metadata.get_all("Provides-Extra", []))
    assert {"web", "metrics", "tracing", "pydantic", "embedded"} <= extras
    assert extras.isdisjoint({"dev", "e2e"})  # dependency groups, not published
