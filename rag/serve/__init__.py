"""rag.serve: the OpenAI-compatible streaming server (``wandao serve``) and its policies.

Modules: ``app`` (FastAPI app and CLI), ``moderation`` (streaming moderation, zero leaks by
construction), ``normalize`` (folding that defeats obfuscation), ``operator`` (operator priority
prompt assembly), ``contested`` (two-sided answers), ``hierarchy`` (instruction-hierarchy SFT data
and compliance eval). Nothing heavy is imported here.
"""
