"""``pqrun completion bash|zsh``: a shell completion script, generated from the parser.

The script is made from the argparse parser itself (``Command.walk``), so a new command,
option or choice completes without anyone editing a script. It completes commands and
their subcommands, the options of the command typed so far, and the values of options
and arguments with fixed choices (``--status``, ``--log-level``, ...). It runs nothing
of pqrun's while completing: every word it offers is written into the script.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh")


@dataclass
class Command:
    """One command of the parser (``pqrun``, ``pqrun jobs``, ``pqrun jobs list``, ...)."""

    path: str
    help: str = ""
    subcommands: dict[str, Command] = field(default_factory=dict)
    #: option string -> its help
    options: dict[str, str] = field(default_factory=dict)
    #: options that take a value -> their choices (empty: any value)
    values: dict[str, list[str]] = field(default_factory=dict)
    #: the choices of its positional arguments
    positional_choices: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, parser: argparse.ArgumentParser, path: str, help: str = "") -> Command:
        command = cls(path, help)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    command.subcommands[name] = cls.of(sub, f"{path} {name}", helps.get(name, ""))
            elif action.option_strings:
                for option in action.option_strings:
                    command.options[option] = one_line(action.help)
                    if action.nargs != 0:
                        command.values[option] = [str(c) for c in action.choices or ()]
            elif action.choices:
                command.positional_choices += [str(c) for c in action.choices]
        return command

    def walk(self) -> Iterator[Command]:
        yield self
        for sub in self.subcommands.values():
            yield from sub.walk()


def one_line(text: str | None) -> str:
    return " ".join((text or "").split()).replace("%%", "%")


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` for ``shell`` (one of SHELLS)."""
    root = Command.of(parser, parser.prog)
    if shell == "bash":
        return bash_script(root)
    if shell == "zsh":
        return zsh_script(root)
    raise ValueError(f"no completion for shell {shell!r}; choose one of {', '.join(SHELLS)}")


def _case(arms: list[tuple[str, str]], default: str) -> list[str]:
    """A ``case "$1" in`` of (pattern, body) arms; each pattern is matched literally."""
    lines = ['    case "$1" in']
    lines += [f"        {shlex.quote(pattern)}) {body} ;;" for pattern, body in arms]
    lines += [f"        *) {default} ;;", "    esac"]
    return lines


def _words(words: list[str]) -> str:
    return f"echo {shlex.quote(' '.join(words))}"


def _tables(root: Command, prefix: str) -> list[str]:
    """Shell functions, the same in bash and zsh, answering from the parser's tables:
    ``_commands PATH``, ``_options PATH``, ``_takes_value 'PATH OPTION'``,
    ``_choices 'PATH OPTION'``, ``_positional_choices PATH``."""
    commands = list(root.walk())
    lines = [f"{prefix}_commands() {{"]
    lines += _case([(c.path, _words(list(c.subcommands))) for c in commands if c.subcommands], ":")
    lines += ["}", f"{prefix}_options() {{"]
    lines += _case([(c.path, _words(list(c.options))) for c in commands if c.options], ":")
    lines += ["}", f"{prefix}_takes_value() {{"]
    takes = [(f"{c.path} {option}", "return 0") for c in commands for option in c.values]
    lines += _case(takes, "return 1")
    lines += ["}", f"{prefix}_choices() {{"]
    choices = [
        (f"{c.path} {option}", _words(values))
        for c in commands
        for option, values in c.values.items()
        if values
    ]
    lines += _case(choices, ":")
    lines += ["}", f"{prefix}_positional_choices() {{"]
    positional = [(c.path, _words(c.positional_choices)) for c in commands if c.positional_choices]
    lines += _case(positional, ":")
    lines += ["}"]
    return lines


# Finds the command typed so far in words 1..current-1: a word that names a subcommand
# of the path so far goes down into it; an option that takes a value skips that value.
# Leaves the command in $cmdpath, and $wants set when the current word is an option's value.
# (bash splits ``--status=F`` into three words: the "=" leaves $wants as it is.)
_WALK = """\
    local cmdpath={prog} wants="" w i
    for (( i = {first}; i < {current}; i++ )); do
        w=${{words[i]}}
        if [[ -n $wants ]]; then [[ $w == = ]] || wants=""; continue; fi
        case "$w" in
            -*=*) continue ;;
            -*) {prefix}_takes_value "$cmdpath $w" && wants=$w; continue ;;
        esac
        case " $({prefix}_commands "$cmdpath") " in
            *" $w "*) cmdpath="$cmdpath $w" ;;
        esac
    done"""


def bash_script(root: Command) -> str:
    prefix = f"_{root.path}"
    walk = _WALK.format(prog=root.path, first=1, current="COMP_CWORD", prefix=prefix)
    body = walk.replace("${words[i]}", "${COMP_WORDS[i]}")
    lines = [
        f"# bash completion for {root.path}: generated by `{root.path} completion bash`.",
        f'# Install: eval "$({root.path} completion bash)" in ~/.bashrc, or save it in',
        f"# ~/.local/share/bash-completion/completions/{root.path}",
        *_tables(root, prefix),
        f"{prefix}_complete() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" offer',
        body,
        '    [[ $cur == = ]] && cur=""  # right after --option=',
        "    if [[ -n $wants ]]; then",
        f'        offer=$({prefix}_choices "$cmdpath $wants")',
        "        [[ -z $offer ]] && return 0  # any value: the default completion",
        "    elif [[ $cur == -* ]]; then",
        f'        offer=$({prefix}_options "$cmdpath")',
        "    else",
        f'        offer=$({prefix}_commands "$cmdpath")',
        f'        [[ -z $offer ]] && offer=$({prefix}_positional_choices "$cmdpath")',
        "    fi",
        '    COMPREPLY=($(compgen -W "$offer" -- "$cur"))',
        "}",
        f"complete -o default -F {prefix}_complete {root.path}",
        "",
    ]
    return "\n".join(lines)


def _described(entries: dict[str, str]) -> str:
    """``name:help`` items for zsh's _describe, as one quoted word per item."""
    return " ".join(
        shlex.quote(f"{name.replace(':', chr(92) + ':')}:{text}") for name, text in entries.items()
    )


def zsh_script(root: Command) -> str:
    prefix = f"_{root.path}"
    commands = list(root.walk())
    walk = _WALK.format(prog=root.path, first=2, current="CURRENT", prefix=prefix)
    described = [f"{prefix}_described() {{", "    reply=()", '    case "$1" in']
    for command in commands:
        for kind, entries in (
            ("commands", {name: sub.help for name, sub in command.subcommands.items()}),
            ("options", command.options),
        ):
            if entries:
                pattern = shlex.quote(f"{kind} {command.path}")
                described.append(f"        {pattern}) reply=({_described(entries)}) ;;")
    described += ["    esac", "}"]
    lines = [
        f"#compdef {root.path}",
        f"# zsh completion for {root.path}: generated by `{root.path} completion zsh`.",
        f"# Install: source <({root.path} completion zsh) in ~/.zshrc (after compinit), or",
        f"# save it as _{root.path} in a directory of your $fpath.",
        *_tables(root, prefix),
        *described,
        f"{prefix}() {{",
        "    local cur=${words[CURRENT]} offer",
        "    local -a reply choices",
        walk,
        "    if [[ -n $wants ]]; then",
        f'        choices=(${{=$({prefix}_choices "$cmdpath $wants")}})',
        "        (( $#choices )) && compadd -a choices || _default",
        "    elif [[ $cur == -*=* ]]; then",
        f'        choices=(${{=$({prefix}_choices "$cmdpath ${{cur%%=*}}")}})',
        "        compset -P '*='",
        "        (( $#choices )) && compadd -a choices || _default",
        "    elif [[ $cur == -* ]]; then",
        f'        {prefix}_described "options $cmdpath"',
        "        _describe -t options option reply",
        "    else",
        f'        {prefix}_described "commands $cmdpath"',
        "        if (( $#reply )); then",
        "            _describe -t commands command reply",
        "        else",
        f'            choices=(${{=$({prefix}_positional_choices "$cmdpath")}})',
        "            (( $#choices )) && compadd -a choices || _default",
        "        fi",
        "    fi",
        "}",
        f'if [[ "${{funcstack[1]}}" == {prefix} ]]; then',
        f'    {prefix} "$@"',
        "else",
        f"    compdef {prefix} {root.path}",
        "fi",
        "",
    ]
    return "\n".join(lines)
