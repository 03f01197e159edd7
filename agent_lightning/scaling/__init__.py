"""Scaling out through existing engines: torch.distributed (DDP/FSDP) and Ray rollout executors."""
