"""Bridges to other tools. ``pytest_plugin`` is the ``pytest11`` entry point."""
