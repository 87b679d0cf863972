"""How option types read in `--help`: the conventions users know from other command lines.

Typer 0.29 prints Python annotations (`<list[Path]>`, `<int range>`, `<bool>` beside a plain flag,
`{taxonomy}` in the usage line). Every parameter without its own metavar gets the familiar word instead:
PATH, TEXT, INTEGER, FLOAT, `[a|b]` for choices, nothing for a flag, the upper-case name for an argument.
"""

from __future__ import annotations

import re
from typing import Any

import typer

_WORDS = {
    "path": "PATH",
    "list[Path]": "PATH",
    "str": "TEXT",
    "list[str]": "TEXT",
    "int": "INTEGER",
    "int range": "INTEGER",
    "float": "FLOAT",
    "float range": "FLOAT",
}


def _word(display: str) -> str | None:
    """`<int range>` -> INTEGER, `<text|json>` -> [text|json]; None: leave typer's text as it is."""
    inner = display.removeprefix("<").removesuffix(">")
    if inner in _WORDS:
        return _WORDS[inner]
    if re.fullmatch(r"[\w.-]+(\|[\w.-]+)+", inner):
        return f"[{inner}]"
    return None


def conventional_metavars(command: Any, help_names: list[str]) -> None:
    """Set the help metavar of every parameter under `command` (a click command or group) that has none."""
    for sub in getattr(command, "commands", {}).values():
        conventional_metavars(sub, help_names)
    # The help option is made on first use and kept (click caches it): make it now, to name it a flag.
    help_option = command.get_help_option(typer.Context(command, help_option_names=help_names))
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if param.param_type_name == "argument":
            # The name column already says what it is; typer would repeat its annotation there.
            param.display_type_rich = lambda ctx: None
            if param.metavar is None:
                param.metavar = param.name.upper()  # typer's usage line adds "..." when repeatable
            elif param.nargs != 1:
                # "[TAXONOMY] LEAF" is its own usage; typer would print "{[TAXONOMY] LEAF}...".
                param._usage_display_name = lambda text=param.metavar: text
        elif param.metavar is None:
            param.metavar = "" if getattr(param, "is_flag", False) else _word(param.display_type(None))
