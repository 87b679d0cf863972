"""`python -m labalign` runs the CLI."""

from labalign.cli import main

main()
