"""Showing what the harness measured: tables, plots, the HTML report, the seed page and its heat maps."""
