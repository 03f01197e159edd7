"""Existing agents trained unmodified: agents call the policy endpoint, the run records the tokens.

* ``llm.py``: what an agent is handed (``base_url``, ``api_key``, ``model``, a reward helper).
* ``tasks.py``: tasks from JSONL files or any environment's task list.
* ``builtin.py``: the built-in agent kinds (``entrypoint``: a Python function; ``command``:
  a program run per episode), registered through the ``register_agents`` hook.
* ``runner.py``: plays a step's episodes through the endpoint (a rollout executor).
"""
