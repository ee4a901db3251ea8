"""align: SFT, reward models, the feedback-only loop, PPO and RLAIF, all retrieval-aware."""
