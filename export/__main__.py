"""``python -m export``: the export stage's command line."""

from .cli import main

main()
