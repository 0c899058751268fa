"""`pqrun completion bash|zsh`: the scripts complete in a real bash, and in a real zsh
(its completion system driven through a pseudo-terminal) when zsh is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pqrun.cli import build_parser


def completion_script(shell: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pqrun", "completion", shell],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "pqrun.bash"
    path.write_text(completion_script("bash"))
    return path


def bash_complete(script: Path, *words: str) -> list[str]:
    """What the completion function offers for ``words`` (the last one being typed)."""
    quoted = " ".join(f"'{word}'" for word in words)
    program = f"""
        source '{script}'
        COMP_WORDS=({quoted})
        COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
        COMP_LINE="${{COMP_WORDS[*]}}"
        _pqrun_complete
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_commands_subcommands_options_and_choices(bash_script: Path) -> None:
    assert bash_complete(bash_script, "pqrun", "sta") == ["status"]
    assert bash_complete(bash_script, "pqrun", "work") == ["worker", "workers"]
    assert bash_complete(bash_script, "pqrun", "jobs", "re") == ["retry"]
    assert bash_complete(bash_script, "pqrun", "jobs", "list", "--st") == ["--status"]
    assert bash_complete(bash_script, "pqrun", "prune", "--keep-d") == [
        "--keep-done",
        "--keep-done-forever",
    ]
    # The value of an option with choices; an option's value is not taken for a command.
    assert bash_complete(bash_script, "pqrun", "jobs", "list", "--status", "F") == ["FAILED"]
    assert bash_complete(
        bash_script, "pqrun", "--version", "jobs", "list", "--type", "jobs", "--status", "C"
    ) == ["CANCELLED"]
    assert bash_complete(bash_script, "pqrun", "worker", "--log-level", "w") == ["warning"]
    # bash splits --option=value at the "=" (COMP_WORDBREAKS).
    assert bash_complete(bash_script, "pqrun", "jobs", "list", "--status", "=", "D") == ["DONE"]
    assert "READY" in bash_complete(bash_script, "pqrun", "jobs", "list", "--status", "=")
    assert bash_complete(bash_script, "pqrun", "completion", "") == ["bash", "zsh"]
    # Options of the command typed, not of another one.
    assert bash_complete(bash_script, "pqrun", "status", "--all") == []


def test_the_scripts_come_from_the_parser() -> None:
    bash, zsh = completion_script("bash"), completion_script("zsh")
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in commands.choices:  # type: ignore[union-attr]
        assert f" {name}" in bash
        assert f"'{name}:" in zsh or f"{name}:" in zsh
    assert "complete -o default -F _pqrun_complete pqrun" in bash
    assert zsh.startswith("#compdef pqrun\n")
    assert "--status:only jobs in this status" in zsh  # options carry their help


def test_pqrun_help_lists_completion() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pqrun", "--help"], capture_output=True, text=True, check=True
    )
    assert "completion" in done.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "pqrun", "completion", "fish"], capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert "invalid choice: 'fish'" in refused.stderr


# Drives an interactive zsh with compinit through a pseudo-terminal: types each line and
# a TAB, then reads the terminal until the expected completion shows (or 20 s pass).
ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty -b z "ZDOTDIR=$ZDIR zsh -i"
zpty -w z "autoload -Uz compinit && compinit -u -D && source $SCRIPT && PS1='> '"
for typed expected in "$@"; do
    zpty -w -n z "$typed"$'\t'
    seen="" start=$SECONDS
    while (( SECONDS - start < 20 )); do
        zpty -r -t z chunk && seen+=$chunk
        [[ $seen == *$expected* ]] && break
    done
    [[ $seen == *$expected* ]] && print -r -- "found $expected" || print -r -- "missing $expected"
    zpty -w -n z $'\C-e\C-u'
done
zpty -d z
"""


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (.ci/run adds it)")
def test_zsh_completes_through_its_completion_system(tmp_path: Path) -> None:
    script = tmp_path / "_pqrun"
    script.write_text(completion_script("zsh"))
    (tmp_path / ".zshrc").write_text("")
    driver = tmp_path / "drive.zsh"
    driver.write_text(ZSH_DRIVER)
    cases = [
        ("pqrun sche", "schedules"),
        ("pqrun jobs list --st", "--status"),
        ("pqrun jobs list --status FAI", "FAILED"),
        ("pqrun worker --log-level war", "warning"),
        ("pqrun worker --log-format=js", "--log-format=json"),
    ]
    arguments = [word for case in cases for word in case]
    done = subprocess.run(
        ["zsh", "-f", str(driver), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        env={"ZDIR": str(tmp_path), "SCRIPT": str(script), "PATH": "/usr/bin:/bin", "TERM": "dumb"},
    )
    assert done.stdout.splitlines() == [f"found {expected}" for _typed, expected in cases], (
        done.stderr
    )
