"""wandao: retrieval-augmented training and serving for language models.

The work lives in the top-level packages `indexer`, `rag`, `pretrain`, `align` and `evals`;
this package only holds the version and the `wandao` command dispatcher.
"""

__version__ = "0.1.0"
