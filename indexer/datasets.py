"""The dataset registry: named public sets under ``$WANDAO_DATA_DIR``, each with its public source.

A name resolves to ``$WANDAO_DATA_DIR/<folder>``. When that folder is missing, :func:`fetch`
downloads the set from its canonical public source into the data dir (this needs network
access to that source; where there is none, the error says what is missing and where to put it).
Any existing path (a BEIR folder, a file) is accepted wherever a name is.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "WANDAO_DATA_DIR"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str
    kind: str  # beir | squad | preferences | text | prompts | constitutional
    source: str  # canonical public source (paper/project page)
    license: str
    #: files to download: (relative path under the dataset folder, URL); a BEIR zip is ("", url).
    files: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: the file whose presence marks the set as present.
    marker: str = ""
    description: str = ""


_GH = "https://raw.githubusercontent.com"
_BEIR = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
_HH = f"{_GH}/anthropics/hh-rlhf/master"
_CAI = f"{_GH}/anthropics/ConstitutionalHarmlessnessPaper/main"

DATASETS: dict[str, DatasetInfo] = {d.name: d for d in [
    DatasetInfo("scifact", "scifact", "beir", "https://github.com/allenai/scifact (BEIR: beir-cellar/beir)",
                "CC BY-NC 2.0", (("", f"{_BEIR}/scifact.zip"),), "corpus.jsonl.gz",
                "5,183 abstracts, 1,109 claims; test qrels 300 queries"),
    DatasetInfo("cranfield", "cranfield", "beir", "http://ir.dcs.gla.ac.uk/resources/test_collections/cran/",
                "none stated (research use)", (("smart:cranfield", "http://ir.dcs.gla.ac.uk/resources/test_collections/cran/cran.tar.gz"),),
                "corpus.jsonl", "1,400 aeronautics abstracts, 225 queries, graded qrels"),
    DatasetInfo("cisi", "cisi", "beir", "http://ir.dcs.gla.ac.uk/resources/test_collections/cisi/",
                "none stated (research use)", (("smart:cisi", "http://ir.dcs.gla.ac.uk/resources/test_collections/cisi/cisi.tar.gz"),),
                "corpus.jsonl", "1,460 library-science abstracts, 112 queries (76 judged)"),
    DatasetInfo("xquad-en", "xquad-en", "squad", "https://github.com/google-deepmind/xquad", "CC BY-SA 4.0",
                (("xquad.en.json", f"{_GH}/google-deepmind/xquad/master/xquad.en.json"),), "xquad.en.json",
                "240 SQuAD v1.1 dev paragraphs, 1,190 questions"),
    DatasetInfo("hh-rlhf", "hh-rlhf", "preferences", "https://github.com/anthropics/hh-rlhf", "MIT",
                tuple((f"{s}/test.jsonl.gz", f"{_HH}/{s}/test.jsonl.gz")
                      for s in ("harmless-base", "helpful-base", "helpful-rejection-sampled")),
                "helpful-base/test.jsonl.gz", "Anthropic HH test splits (chosen/rejected transcripts)"),
    DatasetInfo("tinyshakespeare", "tinyshakespeare", "text", "https://github.com/karpathy/char-rnn", "public domain",
                (("input.txt", f"{_GH}/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"),), "input.txt",
                "1,115,394 characters of Shakespeare"),
    DatasetInfo("wikitext-2", "wikitext-2", "text", "https://blog.salesforceairesearch.com/the-wikitext-long-term-dependency-language-modeling-dataset/",
                "CC BY-SA 3.0", (), "raw/wiki.valid.raw",
                "WikiText-2 valid/test (raw and tokenised); fetch: pytorch/examples word_language_model/data"),
    DatasetInfo("advbench", "advbench", "prompts", "https://github.com/llm-attacks/llm-attacks", "MIT",
                (("harmful_behaviors.csv", f"{_GH}/llm-attacks/llm-attacks/main/data/advbench/harmful_behaviors.csv"),
                 ("harmful_strings.csv", f"{_GH}/llm-attacks/llm-attacks/main/data/advbench/harmful_strings.csv")),
                "harmful_behaviors.csv", "520 harmful behaviours, 574 harmful strings"),
    DatasetInfo("harmbench", "harmbench", "prompts", "https://github.com/centerforaisafety/HarmBench", "MIT",
                (("harmbench_behaviors_text_all.csv", f"{_GH}/centerforaisafety/HarmBench/main/data/behavior_datasets/harmbench_behaviors_text_all.csv"),),
                "harmbench_behaviors_text_all.csv", "400 text behaviours"),
    DatasetInfo("constitutional-ai", "constitutional-ai", "constitutional",
                "https://github.com/anthropics/ConstitutionalHarmlessnessPaper", "none stated",
                tuple((f"prompts/{n}.json", f"{_CAI}/prompts/{n}.json") for n in (
                    "CritiqueRevisionInstructions", "CritiqueRevisionFewShotPrompts", "RLMadisonInstructions",
                    "RLMadisonFewShotPrompts", "RLMadisonPrecogFewShotPrompts")),
                "prompts/RLMadisonInstructions.json", "CAI principles, few-shot prompts and MC evals"),
]}


class DatasetNotFoundError(FileNotFoundError):
    pass


def data_dir() -> Path:
    """``$WANDAO_DATA_DIR``, or ``./data`` when unset."""
    return Path(os.environ.get(DATA_DIR_ENV, "data")).expanduser()


def resolve(name_or_path: str | os.PathLike, fetch_missing: bool = True) -> Path:
    """Resolve a registered dataset name or an existing path to a path.

    Args:
        name_or_path: a name from :data:`DATASETS` (``scifact``) or any existing path.
        fetch_missing: download a registered set that is missing from the data dir.

    Raises:
        DatasetNotFoundError: neither a path nor a registered name, or the set is missing
            and could not be fetched; the message lists what is missing and where.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    name = str(name_or_path)
    if name not in DATASETS:
        if "/" in name or path.suffix:
            raise DatasetNotFoundError(f"{name}: file or folder not found")
        raise DatasetNotFoundError(
            f"{name!r} is neither an existing path nor a registered dataset "
            f"(registered: {', '.join(sorted(DATASETS))})")
    info = DATASETS[name]
    folder = data_dir() / info.folder
    if (folder / info.marker).exists():
        return folder
    if not fetch_missing:
        raise DatasetNotFoundError(f"dataset {name!r} is missing: {folder / info.marker} not found "
                                   f"(set {DATA_DIR_ENV}; source: {info.source})")
    return fetch(name)


def fetch(name: str, timeout: float = 60.0) -> Path:
    """Download a registered dataset from its public source into the data dir (atomically)."""
    info = DATASETS[name]
    folder = data_dir() / info.folder
    if not info.files:
        raise DatasetNotFoundError(f"dataset {name!r} is missing from {folder} and has no automatic download; "
                                   f"get it from {info.source}")
    tmp = folder.with_name(f".{folder.name}.fetching")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for rel, url in info.files:
            logger.info("fetching %s from %s", name, url)
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    payload = resp.read()
            except OSError as err:
                raise DatasetNotFoundError(
                    f"dataset {name!r} is missing from {folder} (looked for {info.marker}) and fetching {url} "
                    f"failed: {err}. Download it by hand into {folder} or set {DATA_DIR_ENV}.") from None
            if rel == "":
                _extract_beir_zip(payload, tmp)
            elif rel.startswith("smart:"):
                _convert_smart_tarball(payload, tmp, rel.split(":", 1)[1])
            else:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(payload)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _extract_beir_zip(payload: bytes, out: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        for member in zf.namelist():
            parts = Path(member).parts[1:]  # drop the top folder (scifact/...)
            if not parts or member.endswith("/"):
                continue
            target = out.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(member))


def _convert_smart_tarball(payload: bytes, out: Path, collection: str) -> None:
    """Convert a SMART-format collection (Cranfield, CISI) to the BEIR layout."""
    from indexer.smart import smart_to_beir

    with tarfile.open(fileobj=io.BytesIO(payload)) as tf:
        files = {Path(m.name).name.lower(): tf.extractfile(m).read().decode("latin-1")
                 for m in tf.getmembers() if m.isfile()}
    smart_to_beir(files, out, collection)
