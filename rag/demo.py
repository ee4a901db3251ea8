"""The augmentation step of ``make demo``: XQuAD-train SFT set over SciFact + XQuAD, one example per template.

Called by the demo command (``augment_demo(workdir)``), or on its own:
``python -m rag.demo runs/demo``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def augment_demo(workdir: str | Path, k: int = 3, templates: tuple[str, ...] = ("sparrow", "lamda", "docs",
                                                                                  "search-r1")) -> dict:
    """Build the index (if missing), the XQuAD-train SFT set per template, and print one rendered example each.

    Test paragraphs are excluded from the evidence (``rag.xquad.test_paragraph_ids``), and the
    contamination check against XQuAD-test runs on the sparrow set. Returns the summaries.
    """
    from indexer import build_index
    from rag.augment import SFTAugmentConfig, augment_sft
    from rag.cli import write_corpus
    from rag.contamination import CheckConfig, run_check
    from rag.xquad import test_paragraph_ids

    work = Path(workdir) / "rag"
    work.mkdir(parents=True, exist_ok=True)
    index = work / "index"
    if not (index / "manifest.json").exists():
        write_corpus(["xquad-en", "scifact"], str(work / "corpus.jsonl"))
        build_index(str(work / "corpus.jsonl"), index, bm25=True, force=True)
    excl = work / "xquad-test-ids.txt"
    excl.write_text("\n".join(sorted(test_paragraph_ids())) + "\n", encoding="utf-8")
    out: dict = {}
    for name in templates:
        cfg = SFTAugmentConfig(index=str(index), data="xquad-en:train", out=str(work / f"xquad-sft-{name}.jsonl"),
                               template=name, k=k, exclude_ids=str(excl), no_evidence_fraction=0.1,
                               distractor_fraction=0.1, cite=True)
        out[name] = augment_sft(cfg)
        with open(cfg.out, encoding="utf-8") as f:
            first = json.loads(f.readline())
        print(f"\n===== {name}: {out[name]['examples']} examples -> {cfg.out}")
        print(first["prompt"] + first["response"])
        print(f"----- evidence_ids (citation order): {first['evidence_ids']}")
    _, summary = run_check(CheckConfig(eval="xquad-en:test", train=[str(work / f"xquad-sft-{templates[0]}.jsonl")]))
    print(f"\ncontamination check vs xquad-en:test: {json.dumps(summary)}")
    out["check"] = summary
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    augment_demo(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
