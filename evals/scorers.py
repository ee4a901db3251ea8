"""Log-probability scorers for multiple-choice and perplexity evals.

The scorers live in :mod:`align.feedback` (Constitutional AI's labeller needs them too, and align
may not import evals); this module re-exports them under the names the suites use:

- :class:`HFCausalLM`: any HF causal LM folder: ``loglikelihood``, ``generate``,
  ``sliding_window_nll``;
- :class:`OpenAICompletions`: any OpenAI-compatible ``/completions`` endpoint with
  ``echo`` + ``logprobs`` (vLLM, the legacy OpenAI API, ``wandao serve``): ``loglikelihood``,
  ``generate``, ``text_nll`` (the same sliding windows over the endpoint's tokens);
- :func:`make_scorer`: either one from a folder or an ``http(s)://…/v1`` base URL.
"""

from align.feedback import HFCausalLM, OpenAICompletions, _split_ws, make_scorer  # noqa: F401 (re-exports)

__all__ = ["HFCausalLM", "OpenAICompletions", "make_scorer"]
