"""What every command module shares: the errors shown as one line, the way to fail, how a comparison prints.
The command modules import it, never cli.py, so the command line imports one way."""
from __future__ import annotations

import json

import typer

# OSError: an unwritable --out or a full disk; KeyError: malformed metadata in a weights file
KNOWN_ERRORS: tuple = (ValueError, OSError, KeyError, RuntimeError, NotImplementedError)


def fail(e: Exception) -> None:
    """One red line on stderr and exit code 2 (a known error is the user's to fix, not a traceback)."""
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def echo_outputs(data: dict, markdown: str, files: dict, as_json: bool) -> None:
    """What a comparison command prints: its JSON alone (--json, for pipes), or its table and the files written."""
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(markdown)
    typer.echo("wrote " + ", ".join(str(f) for f in files.values()))
