"""The align package's commands (``wandao <name>``) and config classes (for the config test).

Each command is ``name: ("module:function", "one-line summary")``; the function takes ``argv`` and
returns an exit code. Other align commands (sft, iterate, ppo, …) are added to these dicts.
"""

COMMANDS = {
    "rm": ("align.reward:main", "reward models: train | eval (accuracy, ties, ECE) | score, K-wise ranking loss"),
    "sft": ("align.sft:main", "supervised fine-tuning with evidence; loss on response tokens only, packing, resume"),
    "iterate": ("align.iterate:main", "feedback-only loop: best-of-n sampling with evidence, select by RM/labels, SFT"),
    "ppo": ("align.ppo:main", "PPO with retrieval in the loop: KL-penalised reward, GAE, PPO-ptx, EMA, rule rewards"),
    "cai": ("align.rlaif:main", "Constitutional AI: sl (critique/revision + SFT) | label (AI soft labels) | rl (PM + PPO)"),
}

# command -> config dataclass, so every YAML under configs/ can be loaded by the command its first line names.
CONFIGS = {
    "rm train": "align.reward:RMConfig",
    "sft": "align.sft:SFTConfig",
    "iterate": "align.iterate:IterateConfig",
    "ppo": "align.ppo:PPOConfig",
    "cai sl": "align.rlaif:SLConfig",
    "cai label": "align.rlaif:LabelConfig",
    "cai rl": "align.rlaif:RLConfig",
}
