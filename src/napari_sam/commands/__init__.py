"""Subcommands of ``napari-sam`` that are large enough for a module of their own."""
