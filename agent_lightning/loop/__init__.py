"""The training loop: trainer, rollouts, batches, scoring, checkpoints, replay, graceful stop."""
