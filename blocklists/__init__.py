"""Blocklists: sources, formats, the compiled matcher and the bundled data."""
