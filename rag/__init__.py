"""rag: one retriever API over wandao's indexes, evidence templates, and retrieval-augmented data."""
