"""Example agents written against the ``openai`` SDK, trained unmodified by the presets
``quickstart-agent`` and ``smollm2-react-agent`` (``alightning run <preset>``)."""
