"""Training recipes: stage-1 / 1.5 / 2, continue, DPO; LoRA; resumable, multi-process."""
