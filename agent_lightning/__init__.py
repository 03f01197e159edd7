"""agent-lightning: train LLM agents with reinforcement learning.

Importing the package is cheap and has no side effects; torch and transformers are
imported by the modules that need them.
"""

__version__ = "0.1.0"
