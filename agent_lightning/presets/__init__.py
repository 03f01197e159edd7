"""Packaged run configurations (``alightning run <name>``)."""
