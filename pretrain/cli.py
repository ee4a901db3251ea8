"""The pretrain package's commands (``wandao <name>``) and config classes (for the config test)."""

COMMANDS = {
    "plan": ("pretrain.planner:plan_main", "Chinchilla compute planning: optimal params/tokens for a FLOP budget"),
    "pretrain": ("pretrain.train:main", "pretrain a decoder-only LM (plain torch or DeepSpeed ZeRO 1/2/3)"),
    "surgery": ("pretrain.surgery:surgery_main", "grow an HF checkpoint wider/deeper, function-preserving"),
}

# command -> config dataclass, so every YAML under configs/ can be loaded by the command its first line names.
CONFIGS = {
    "pretrain": "pretrain.train:PretrainConfig",
}
