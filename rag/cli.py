"""The rag package's commands: ``wandao augment sft|pretrain|rl|check|corpus|cloze``.

Each subcommand's flags map onto its config dataclass (``--config FILE.yaml`` first, flags
override it); the dataclasses live beside the library functions they drive.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

logger = logging.getLogger(__name__)

COMMANDS = {
    "augment": ("rag.cli:augment_main",
                "retrieval-augmented data: sft | pretrain | rl prompts | check (contamination) | corpus | cloze"),
    "serve": ("rag.serve.app:main", "OpenAI-compatible RAG server: streaming, citations, moderation, operator prompt"),
}

# "augment <sub>" -> config dataclass (configs/rag/*.yaml name the subcommand in their first line).
CONFIGS = {
    "augment sft": "rag.augment:SFTAugmentConfig",
    "augment pretrain": "rag.augment_pretrain:PretrainAugmentConfig",
    "augment rl": "rag.augment:RLAugmentConfig",
    "augment check": "rag.contamination:CheckConfig",
    "augment cloze": "rag.curriculum:ClozeConfig",
}

EPILOG = """examples:
  wandao augment corpus --from xquad-en --from scifact --out runs/rag/corpus.jsonl
  wandao index build --corpus runs/rag/corpus.jsonl --out runs/rag/index --bm25
  wandao augment sft --index runs/rag/index --data xquad-en:train --template sparrow -k 3 --out runs/rag/sft.jsonl
  wandao augment pretrain --index runs/rag/wiki-index --corpus wikitext-2 --out runs/rag/wiki-ralm -k 2 --chunk-tokens 64
  wandao augment pretrain --inspect runs/rag/wiki-ralm
  wandao augment rl --index runs/rag/index --data hh-rlhf:helpful-base --template search-r1 -k 3 --out runs/rag/rl.jsonl
  wandao augment check --eval xquad-en:test --train runs/rag/sft.jsonl
  wandao augment cloze --from xquad-en:train --from wikitext-2 --examples 50000 --out runs/rag/cloze.jsonl \\
      --corpus-out runs/rag/cloze-corpus.jsonl
"""


def _common(p: argparse.ArgumentParser, index_required: bool = True) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config; flags override its values")
    p.add_argument("--index", metavar="DIR", help="index directory (wandao index build)")
    p.add_argument("-k", "--k", type=int, help="documents per example")
    p.add_argument("--retriever", help="bm25 | lucene | dense | hybrid (default: the index's)")
    p.add_argument("--tokenizer", help="tokenizer.json or tokenizer folder for budgets (default: minilm)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="queries per retrieval call")
    p.add_argument("--cache", metavar="DIR", help="retrieval cache directory ('default' = ~/.cache/wandao)")
    p.add_argument("--limit", type=int, help="stop after this many input rows")


def _text_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="PATH_OR_DATASET", help="JSONL/parquet/HF dataset or a split (xquad-en:train)")
    p.add_argument("--out", metavar="FILE.jsonl", help="output JSONL")
    p.add_argument("--template", choices=["sparrow", "lamda", "docs", "search-r1"], help="evidence template")
    p.add_argument("--exclude-ids", dest="exclude_ids", metavar="FILE", help="document ids never to retrieve")
    p.add_argument("--query-field", dest="query_field", help="input field holding the search query")
    p.add_argument("--passage-tokens", dest="passage_tokens", type=int, help="token budget per passage")
    p.add_argument("--total-tokens", dest="total_tokens", type=int, help="token budget for all passages")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wandao augment", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="sub", metavar="{sft,pretrain,rl,check,corpus,cloze}")

    sft = sub.add_parser("sft", help="retrieval-augmented SFT examples", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(sft)
    _text_flags(sft)
    sft.add_argument("--no-evidence-fraction", dest="no_evidence_fraction", type=float)
    sft.add_argument("--distractor-fraction", dest="distractor_fraction", type=float)
    sft.add_argument("--no-evidence-target", dest="no_evidence_target", choices=["answer", "abstain"])
    sft.add_argument("--abstain-answer", dest="abstain_answer")
    sft.add_argument("--cite", action="store_const", const=True, help="append [i] of the passage holding the answer")
    sft.add_argument("--seed", type=int)
    sft.add_argument("--min-passages", dest="min_passages", type=int)

    pre = sub.add_parser("pretrain", help="neighbours prepended to chunks, packed with a loss mask", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(pre)
    pre.add_argument("--corpus", metavar="PATH", help="dataset name, JSONL, or text file (wikitext-2, tinyshakespeare)")
    pre.add_argument("--out", metavar="DIR", help="output token folder")
    pre.add_argument("--chunk-tokens", dest="chunk_tokens", type=int)
    pre.add_argument("--neighbour-tokens", dest="neighbour_tokens", type=int)
    pre.add_argument("--seq-len", dest="seq_len", type=int, help="packed row length (block_size + 1)")
    pre.add_argument("--query", choices=["chunk", "previous"])
    pre.add_argument("--exclude-sources", dest="exclude_sources", metavar="FILE")
    pre.add_argument("--max-ngram-overlap", dest="max_ngram_overlap", type=float)
    pre.add_argument("--ngram", type=int)
    pre.add_argument("--force", action="store_const", const=True)
    pre.add_argument("--inspect", metavar="DIR", help="print the chunk records of an augmented folder as JSON lines")
    pre.add_argument("--text", action="store_true", help="with --inspect: add the decoded evidence and chunk")

    rl = sub.add_parser("rl", help="prompts with evidence (or retrieval settings) for PPO", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(rl)
    _text_flags(rl)
    rl.add_argument("--defer", action="store_const", const=True, help="retrieve at rollout time, not now")

    chk = sub.add_parser("check", help="contamination: eval questions/answers in training data", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    chk.add_argument("--config", metavar="FILE.yaml")
    chk.add_argument("--eval", metavar="SPLIT_OR_JSONL", help="evaluation set (xquad-en:test or JSONL)")
    chk.add_argument("--train", metavar="JSONL", nargs="+", help="training files (augment outputs)")
    chk.add_argument("--index", metavar="DIR", help="expand evidence_ids to full documents")
    chk.add_argument("--ngram", type=int)
    chk.add_argument("--threshold", type=float)
    chk.add_argument("--min-answer-words", dest="min_answer_words", type=int)
    chk.add_argument("--out", metavar="FILE.jsonl", help="write the flagged items here")
    chk.add_argument("--fail", action="store_true", help="exit 1 when anything is flagged")

    cor = sub.add_parser("corpus", help="write XQuAD paragraphs (and other corpora) as one JSONL corpus",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cor.add_argument("--from", dest="sources", action="append", required=False, metavar="NAME_OR_PATH",
                     help="xquad-en (or xquad-en:train/test) for paragraphs; any corpus name or file")
    cor.add_argument("--out", metavar="FILE.jsonl")

    clz = sub.add_parser("cloze", help="synthetic cloze questions (SQuAD-style JSONL) from corpus paragraphs",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    clz.add_argument("--config", metavar="FILE.yaml")
    clz.add_argument("--from", dest="sources", action="append", metavar="NAME_OR_PATH",
                     help="xquad-en:train, wikitext-2, scifact, or a JSONL/text file (repeatable)")
    clz.add_argument("--out", metavar="FILE.jsonl", help="output SQuAD-style JSONL")
    clz.add_argument("--corpus-out", dest="corpus_out", metavar="FILE.jsonl", help="paragraphs used, for indexing")
    clz.add_argument("--examples", type=int, help="questions to write")
    clz.add_argument("--seed", type=int)
    clz.add_argument("--drop-fraction", dest="drop_fraction", type=float, help="chance of dropping a question word")
    clz.add_argument("--fronted-fraction", dest="fronted_fraction", type=float, help="share of wh-first questions")
    clz.add_argument("--per-paragraph", dest="per_paragraph", type=int, help="most questions per paragraph")
    return parser


_NOT_CONFIG = {"config", "sub", "inspect", "text", "fail", "sources"}


def _load(cls, args: argparse.Namespace):
    from pretrain.config import load_config

    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in _NOT_CONFIG}
    return load_config(cls, args.config, overrides)


def augment_main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sub is None:
        parser.print_help()
        return 2
    from indexer.data import DataError
    from pretrain.config import ConfigError

    try:
        return _run(args)
    except (ConfigError, DataError, FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        print(f"wandao augment {args.sub}: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.sub == "sft":
        from rag.augment import SFTAugmentConfig, augment_sft

        print(json.dumps(augment_sft(_load(SFTAugmentConfig, args))))
    elif args.sub == "rl":
        from rag.augment import RLAugmentConfig, augment_rl

        print(json.dumps(augment_rl(_load(RLAugmentConfig, args))))
    elif args.sub == "pretrain":
        from rag.augment_pretrain import PretrainAugmentConfig, augment_pretrain, inspect

        if args.inspect:
            for rec in inspect(args.inspect, limit=args.limit, text=args.text, tokenizer=args.tokenizer):
                print(json.dumps(rec, ensure_ascii=False))
            return 0
        print(json.dumps(augment_pretrain(_load(PretrainAugmentConfig, args))))
    elif args.sub == "check":
        from rag.contamination import CheckConfig, run_check

        findings, summary = run_check(_load(CheckConfig, args))
        for f in findings:
            if f.flagged_question or f.flagged_answer:
                print(json.dumps(f.to_dict(), ensure_ascii=False))
        print(json.dumps(summary))
        return 1 if args.fail and summary["contaminated"] else 0
    elif args.sub == "corpus":
        if not args.out or not args.sources:
            raise ValueError("--out and at least one --from are required")
        n = write_corpus(args.sources, args.out)
        print(json.dumps({"documents": n, "out": args.out}))
    elif args.sub == "cloze":
        from rag.curriculum import ClozeConfig, run_cloze

        cfg = _load(ClozeConfig, args)
        if args.sources:
            cfg.sources = list(args.sources)
        print(json.dumps(run_cloze(cfg)))
    return 0


def write_corpus(sources: list[str], out: str) -> int:
    """Concatenate corpora into one JSONL (``_id``, ``title``, ``text``); ``xquad-en[:split]`` gives paragraphs."""
    from indexer.data import DataError, iter_corpus, write_jsonl
    from rag.xquad import xquad_corpus

    def rows():
        seen: set[str] = set()
        for src in sources:
            name, _, split = src.partition(":")
            docs = xquad_corpus(split or "all") if name == "xquad-en" else iter_corpus(src)
            for d in docs:
                if d["id"] in seen:
                    raise DataError(src, f"document id {d['id']!r} also occurs in an earlier source", field="_id")
                seen.add(d["id"])
                yield {"_id": d["id"], "title": d.get("title", ""), "text": d["text"]}

    return write_jsonl(out, rows())
