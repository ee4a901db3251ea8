"""Convert SMART-format test collections (Cranfield, CISI) to the BEIR layout.

Follows the conversion the mirrored data used (shared/data/README.md): ``title`` = ``.T``,
``text`` = ``.W`` with lines joined by single spaces; Cranfield queries are renumbered 1..225
in file order (as ir_datasets does, since ``cranqrel`` refers to queries by position) and its
grades become ``score = 5 - grade`` with grade -1 left out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


def parse_smart(text: str) -> list[dict[str, str]]:
    """Split a SMART file into records ``{"I": id, "T": ..., "W": ..., ...}``."""
    records: list[dict[str, str]] = []
    current: dict[str, list[str]] | None = None
    key = None
    for line in text.splitlines():
        m = re.match(r"^\.([A-Z])(?:\s+(\S+))?\s*$", line)
        if m:
            if m.group(1) == "I":
                if current is not None:
                    records.append({k: " ".join(" ".join(v).split()) for k, v in current.items()})
                current = {"I": [m.group(2) or ""]}
                key = None
            else:
                key = m.group(1)
                current.setdefault(key, [])
            continue
        if current is not None and key is not None:
            current[key].append(line.strip())
    if current is not None:
        records.append({k: " ".join(" ".join(v).split()) for k, v in current.items()})
    return records


def smart_to_beir(files: dict[str, str], out: Path, collection: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    if collection == "cranfield":
        docs, queries, rels = files["cran.all.1400"], files["cran.qry"], files["cranqrel"]
    elif collection == "cisi":
        docs, queries, rels = files["cisi.all"], files["cisi.qry"], files["cisi.rel"]
    else:
        raise ValueError(f"unknown SMART collection {collection!r}")
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for r in parse_smart(docs):
            f.write(json.dumps({"_id": r["I"], "title": r.get("T", ""), "text": r.get("W", ""),
                                "metadata": {"authors": r.get("A", "")}}) + "\n")
    query_records = parse_smart(queries)
    with open(out / "queries.jsonl", "w", encoding="utf-8") as f:
        for i, r in enumerate(query_records, start=1):
            qid = str(i) if collection == "cranfield" else r["I"]
            f.write(json.dumps({"_id": qid, "text": r.get("W", ""), "metadata": {"original_id": r["I"]}}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"]
    for row in rels.splitlines():
        parts = row.split()
        if len(parts) < 3:
            continue
        if collection == "cranfield":
            grade = int(parts[2])
            if grade == -1:
                continue
            lines.append(f"{int(parts[0])}\t{int(parts[1])}\t{5 - grade}")
        else:
            lines.append(f"{int(parts[0])}\t{int(parts[1])}\t1")
    (out / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
