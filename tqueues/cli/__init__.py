"""Command-line entry points (docopt)."""
