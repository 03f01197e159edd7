"""The policy endpoint: an OpenAI-compatible server in front of the run's backend."""
