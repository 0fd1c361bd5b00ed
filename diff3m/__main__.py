"""``python -m diff3m`` runs the CLI."""

from diff3m.cli import main

main()
