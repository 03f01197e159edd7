"""The Hugging Face transformers backend and its helpers (modeling, quantization, chat tokens, LoRA targets, stop strings, the tiny preset)."""
