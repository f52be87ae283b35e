"""CLI subcommands that are glue only (the library does the work)."""
