"""`python -m fusc_lib` is the `fusc` command."""

from fusc_lib.cli import app

app()
