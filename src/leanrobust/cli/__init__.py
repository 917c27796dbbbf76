"""The `leanrobust` command line (the console script and `python -m leanrobust`): the app, assembled from one
module per command group. Each command module imports common.py, never this package, so the command line
imports one way; each imports the library it drives only when its command runs."""
from __future__ import annotations

import sys

import typer

from . import compress, proxy, run, selection, speedup

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Adversarially robust image classifiers with less data and less compute.")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"leanrobust {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Adversarially robust image classifiers with less data and less compute."""


run.register(app)  # train, resume, eval, report, export, config show
selection.register(app)  # score, select
compress.register(app)  # compress
proxy.register(app)  # synth, proxy-quality, certify
speedup.register(app)  # speedup


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
