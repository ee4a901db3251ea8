"""evals: one evaluation harness for retrieval, QA, attribution, reward models, moderation and LMs."""
