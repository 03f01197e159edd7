"""The run id and high-water step a tracker keeps in the run directory (trackers._state)."""

from __future__ import annotations

from agent_lightning.trackers._state import RunState


def test_state_survives_the_process_and_skips_only_the_replayed_steps(tmp_path):
    state = RunState(tmp_path, "demo")
    assert (state.run_id, state.last_step) == (None, -1)
    state.start("run-1")
    for step in range(6):
        state.logged(step)
    again = RunState(tmp_path, "demo")  # a new process reads the run directory
    assert (again.run_id, again.last_step) == ("run-1", 5)
    again.resume(3)  # checkpoint 3; steps 4 and 5 were logged before the crash
    assert [s for s in range(8) if again.should_log(s)] == [0, 1, 2, 3, 6, 7]
    again.start("run-2")  # the old run is gone: a fresh run skips nothing
    assert [s for s in range(8) if again.should_log(s)] == list(range(8))
    assert RunState(tmp_path, "demo").run_id == "run-2"


def test_a_clean_stop_replays_nothing(tmp_path):
    state = RunState(tmp_path, "demo")
    state.start("run-1")
    state.logged(4)
    state.resume(4)
    assert all(state.should_log(s) for s in range(10))
