"""pretrain: compute planning, models, tokenizers, data, optimizers and the trainer."""
