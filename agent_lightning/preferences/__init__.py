"""Preference data (JSONL pairs) and Bradley-Terry reward-model training."""
