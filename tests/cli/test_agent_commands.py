"""``alightning try-agent``, ``alightning serve`` and ``alightning eval`` for agent runs, through the real CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest

SMALL = ["trainer.batch_size=4", "algorithm.group_size=2", "trainer.eval_episodes=6", "trackers=[jsonl]"]


def test_try_agent_plays_the_base_policy_and_prints_the_recorded_calls(alightning, cli_env, tmp_path):
    out = tmp_path / "try.json"
    result = subprocess.run([*alightning, "try-agent", "quickstart-agent", "--episodes", "3", "--json", str(out)],
                            capture_output=True, text=True, env=cli_env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = json.loads(out.read_text())
    assert len(records) == 3 and all(r["failure"] is None and 1 <= len(r["calls"]) <= 3 for r in records)
    assert all(r["prompt"].startswith("<|user|> guess my number between 1 and 6") for r in records)
    assert "3 trajectories from 3 episodes" in result.stdout and "prefix_breaks=0" in result.stdout
    assert result.stdout.count("reply (1 tokens)") == sum(len(r["calls"]) for r in records)


def test_try_agent_refuses_a_config_without_an_agent(alightning, cli_env):
    result = subprocess.run([*alightning, "try-agent", "quickstart"], capture_output=True, text=True, env=cli_env, timeout=120)
    assert result.returncode == 2 and "has no agent section" in result.stderr


@pytest.mark.slow
def test_a_trained_agent_run_is_evaluated_and_served_over_the_openai_api(alightning, cli_env, tmp_path):
    from openai import OpenAI

    run_dir = tmp_path / "run"
    result = subprocess.run([*alightning, "run", "quickstart-agent", "trainer.steps=2", "trainer.checkpoint_every=1",
                             *SMALL, "--output-dir", str(run_dir)], capture_output=True, text=True, env=cli_env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = subprocess.run([*alightning, "eval", str(run_dir), "--episodes", "6", "--no-trackers"],
                               capture_output=True, text=True, env=cli_env, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    document = json.loads((run_dir / "eval" / "results.json").read_text())
    assert [r["step"] for r in document["checkpoints"]] == [0, 1, 2]
    assert document["settings"]["environment"]["name"] == "guess-number"

    server = subprocess.Popen([*alightning, "serve", str(run_dir), "--port", "0", "--api-key", "k-test"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env)
    try:
        first = server.stdout.readline()
        assert "checkpoints/step-2" in first, first + server.stderr.read()[-2000:]
        base_url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", first).group(1)
        client = OpenAI(base_url=base_url, api_key="k-test", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["policy"]
        reply = client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "guess my number between 1 and 6 ."}],
                                               max_tokens=1, temperature=0.0)
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens == 1
        again = client.chat.completions.create(model="policy", messages=[{"role": "user", "content": "guess my number between 1 and 6 ."}],
                                               max_tokens=1, temperature=0.0)
        assert again.choices[0].message.content == reply.choices[0].message.content  # greedy: the trained policy's choice
        import openai

        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            out, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0 and "stopped" in out, err[-2000:]


def test_an_agent_module_next_to_the_config_is_found_from_the_console_script(cli_env, tmp_path):
    """``alightning`` is a console script (its folder, not the working directory, is on
    sys.path): ``agent.entrypoint: my_agent:solve`` must still find ./my_agent.py, as uvicorn does."""
    import shutil
    import sys
    from pathlib import Path

    (tmp_path / "my_agent.py").write_text(
        "from openai import OpenAI\n\n"
        "def solve(task, llm):\n"
        "    client = OpenAI(base_url=llm.base_url, api_key=llm.api_key, max_retries=0)\n"
        "    reply = client.chat.completions.create(model=llm.model, messages=[{'role': 'user', 'content': task['question']}])\n"
        "    return {'reward': 1.0, 'answer': reply.choices[0].message.content}\n")
    (tmp_path / "tasks.jsonl").write_text('{"question": "guess"}\n{"question": "number"}\n')
    (tmp_path / "my.yaml").write_text("model: {preset: tiny}\nagent: {entrypoint: 'my_agent:solve', tasks: tasks.jsonl}\n"
                                      "sampling: {max_new_tokens: 2}\ntrackers: [jsonl]\n")
    script = shutil.which("alightning", path=str(Path(sys.executable).parent))
    assert script is not None
    result = subprocess.run([script, "try-agent", "my.yaml", "--episodes", "2", "--split", "train"], cwd=tmp_path,
                            capture_output=True, text=True, env=cli_env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 trajectories from 2 episodes" in result.stdout and "reward 1, success True" in result.stdout
