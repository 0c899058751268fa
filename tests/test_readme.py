"""README's two commands are the ones CI and users run."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = "pip install --group dev -e . && python -m pytest"
DEMO_COMMAND = "pip install -e . && python -m pqrun demo"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{TEST_COMMAND}\n```" in readme
    assert f"```bash\n{DEMO_COMMAND}\n```" in readme
    ci_lines = (ROOT / ".ci/run").read_text().splitlines()
    assert ci_lines[-1] == TEST_COMMAND
