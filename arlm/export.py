"""arlm-export: a trained model as ONNX, for onnxruntime in Python, a browser page, or ExecuTorch.

    arlm-export --checkpoint runs/hadith --out export/hadith                    # model.onnx + vocab, card
    arlm-export --checkpoint runs/hadith --out export/hadith --quantize int8    # + model.int8.onnx, measured
    arlm-export --checkpoint runs/hadith --out web/hadith --format web          # int8 + the page (arlm.webpage)

What is exported is ONE STEP of the model: read one token per sequence, return the
log-probabilities of the next one and the new state. A caller (Python, JavaScript, a phone)
keeps the state between calls and walks the text token by token, as `FrozenModel.step` does.

    inputs   token     int64   [B]          the token read at this step
             h, c      float32 [L, B, H]    every layer's state before it (zeros: a new text)
    outputs  log_probs float32 [B, V]       log P(next token), the whole vocabulary
             h_next    float32 [L, B, H]    the state after it: feed it back in as h, c
             c_next    float32 [L, B, H]
             gates     float32 [L, 4, B, H] each layer's f, i, c̃, o at this step

B is dynamic. A text is read as [<eos>] + its ids from the zero state, as in training and in
`arlm.load(...).predict_next`; when the model resets at <eos> (`reset_at_eos`, the default),
the step zeroes the state before it reads an <eos>, so a page gets the same numbers as Python.

`StepModule` is that step as a small torch module over the FrozenModel's float32 tensors
(the engine, built once from the trained model, is what every arlm reader reads): the
embedding row, then per layer the six LSTM equations of arlm/cell.py on the fused
W (4H, H + I) (rows f, i, c̃, o; columns [h, x]), then the projection and the full or
adaptive softmax, over the whole vocabulary (FrozenModel.log_probs). Weights are stored
transposed so every product is an ONNX MatMul with a constant B, which is what
onnxruntime's dynamic int8 quantization rewrites. The same module is what
`torch.export.export` (and so ExecuTorch) starts from.

Folder written (`--format onnx`): model.onnx, model.int8.onnx (with --quantize int8),
vocab.json (tokens in id order, special ids, tokenizer kind, the model's shape),
normalize.json, model-card.md. `--format web` writes the int8 model (or float32 with
--quantize none) and the json files, then `arlm.webpage.build_web` adds the page.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arlm import cli

OPSET = 17
MIN_OPSET = 15                         # the exporter writes 18 and converts down; below 15 it cannot
WEB_LIMIT_MB = 200                    # a page that downloads more than this is too big to be a page
EVAL_DOCS = 200                       # test documents the int8 model is measured on by default
MODEL_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
VOCAB_FILE, NORMALIZE_FILE, CARD_FILE = "vocab.json", "normalize.json", "model-card.md"
INPUTS = ("token", "h", "c")
OUTPUTS = ("log_probs", "h_next", "c_next", "gates")
INSTALL = "pip install 'arlm[export]' (or bash scripts/setup.sh --dev)"


def require(*names: str) -> list:
    """Import the export tools, or say in one line how to install them."""
    modules, missing = [], []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise cli.RunFailed(f"arlm-export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                            f"not installed: {INSTALL}")
    return modules


# --- the step ------------------------------------------------------------------------


class StepModule(nn.Module):
    """One step of a FrozenModel (float32) as plain tensor operations: (token, h, c) →
    (log_probs, h_next, c_next, gates). Copies the engine's tensors; nothing is shared."""

    def __init__(self, engine):
        super().__init__()
        if engine.weights != "float32":
            raise ValueError(f"export reads a float32 engine (got {engine.weights}); the int8 copy is made from it")
        cfg = engine.config
        self.num_layers, self.hidden_size, self.vocab_size = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
        self.eos_id, self.reset_at_eos = int(cfg.eos_id), bool(cfg.reset_at_eos)
        cpu = lambda t: t.detach().to("cpu", torch.float32).clone()  # noqa: E731
        tr = lambda t: t.detach().to("cpu", torch.float32).t().contiguous()  # noqa: E731  (out, in) → (in, out)
        self.register_buffer("embedding", cpu(engine.embedding))
        for k, layer in enumerate(engine.layers):
            self.register_buffer(f"W{k}", tr(layer.weights.W))   # ([h, x], 4H): columns f, i, c̃, o
            self.register_buffer(f"b{k}", cpu(layer.weights.b))
        self.has_projection = engine.projection is not None
        if self.has_projection:
            self.register_buffer("proj_W", tr(engine.projection.weight))
            self.register_buffer("proj_b", cpu(engine.projection.bias))
        self.adaptive = bool(getattr(engine, "adaptive", None))
        if not self.adaptive:
            if engine.decoder is None:
                raise ValueError("the engine has neither a decoder nor an adaptive softmax: nothing to export")
            # Tied weights are stored once: the output layer reads the embedding matrix itself
            # (one initializer for the Gather and the Gemm), not a transposed second copy.
            self.tied = tuple(engine.decoder.weight.shape) == tuple(engine.embedding.shape) and torch.equal(
                engine.decoder.weight.detach().cpu(), engine.embedding.detach().cpu())
            if not self.tied:
                self.register_buffer("dec_W", tr(engine.decoder.weight))
            self.register_buffer("dec_b", cpu(engine.decoder.bias) if engine.decoder.bias is not None
                                 else torch.zeros(cfg.vocab_size))
            self.tails = 0
        else:
            self.shortlist, self.cutoffs = int(engine.shortlist), [int(c) for c in engine.cutoffs]
            if self.cutoffs[-1] != cfg.vocab_size or len(self.cutoffs) != len(engine.tails) + 1:
                raise ValueError(f"adaptive softmax cutoffs {self.cutoffs} do not cover the vocabulary of "
                                 f"{cfg.vocab_size}; cannot export it")
            self.register_buffer("head_W", tr(engine.head.weight))
            self.has_head_bias = engine.head.bias is not None
            if self.has_head_bias:
                self.register_buffer("head_b", cpu(engine.head.bias))
            for k, (down, up) in enumerate(engine.tails):
                if down.bias is not None or up.bias is not None:
                    raise ValueError("adaptive softmax tails with biases are not what arlm trains; cannot export them")
                self.register_buffer(f"down{k}", tr(down.weight))
                self.register_buffer(f"up{k}", tr(up.weight))
            self.tails = len(engine.tails)

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def example_inputs(self, batch: int = 2) -> tuple[Tensor, Tensor, Tensor]:
        z = torch.zeros(self.num_layers, batch, self.hidden_size)
        return torch.full((batch,), self.eos_id, dtype=torch.long), z, z.clone()

    def log_probs(self, y: Tensor) -> Tensor:
        """Features (B, E) → log-probabilities over the whole vocabulary (B, V)."""
        if not self.adaptive:
            logits = F.linear(y, self.embedding, self.dec_b) if self.tied else y @ self.dec_W + self.dec_b
            return F.log_softmax(logits, dim=-1)
        logits = y @ self.head_W
        if self.has_head_bias:
            logits = logits + self.head_b
        head = F.log_softmax(logits, dim=-1)
        parts = [head[:, : self.shortlist]]
        for k in range(self.tails):  # cluster k: log P(cluster) + log P(word | cluster)
            local = F.log_softmax((y @ getattr(self, f"down{k}")) @ getattr(self, f"up{k}"), dim=-1)
            parts.append(local + head[:, self.shortlist + k : self.shortlist + k + 1])
        return torch.cat(parts, dim=1)

    def forward(self, token: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        H = self.hidden_size
        if self.reset_at_eos:  # an <eos> starts a document: it is read from the zero state
            keep = (token != self.eos_id).to(h.dtype).view(1, -1, 1)
            h, c = h * keep, c * keep
        x = torch.index_select(self.embedding, 0, token)               # (B, E): the token's row
        hs, cs, gates = [], [], []
        for k in range(self.num_layers):
            hx = torch.cat([h[k], x], dim=1)                           # [h_{t-1}, x_t]
            z = hx @ getattr(self, f"W{k}") + getattr(self, f"b{k}")   # (B, 4H): f, i, c̃, o
            f = torch.sigmoid(z[:, 0:H])                               # keep
            i = torch.sigmoid(z[:, H : 2 * H])                         # write
            c_tilde = torch.tanh(z[:, 2 * H : 3 * H])                  # propose
            o = torch.sigmoid(z[:, 3 * H : 4 * H])                     # expose
            c_k = f * c[k] + i * c_tilde                               # memory
            h_k = o * torch.tanh(c_k)                                  # output
            hs.append(h_k)
            cs.append(c_k)
            gates.append(torch.stack([f, i, c_tilde, o]))
            x = h_k
        if self.has_projection:
            x = x @ self.proj_W + self.proj_b
        return self.log_probs(x), torch.stack(hs), torch.stack(cs), torch.stack(gates)


# --- ONNX files ------------------------------------------------------------------------


class _Quiet:
    """The exporters' chatter (progress lines, version-conversion notices, deprecation
    warnings) kept out of the command's output; returned as text when something fails."""

    NAMES = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir", "root")

    def __enter__(self):
        import contextlib
        import io
        import logging
        import warnings

        self.text = io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self.text))
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        self._levels = []
        for name in self.NAMES:
            logger = logging.getLogger(None if name == "root" else name)
            self._levels.append((logger, logger.level))
            logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for logger, level in self._levels:
            logger.setLevel(level)
        self._stack.close()
        return False


def export_onnx(engine, path: str | os.PathLike, opset: int = OPSET, metadata: dict | None = None) -> Path:
    """Write one step of `engine` (a float32 FrozenModel) to `path` as ONNX with `opset`,
    the batch dimension dynamic, weights inside the file. Returns the path."""
    torch_onnx, onnx = torch.onnx, require("onnx", "onnxscript")[0]
    path = Path(path)
    module = StepModule(engine).eval()
    batch = torch.export.Dim("batch")
    with _Quiet() as quiet, torch.no_grad():
        try:
            torch_onnx.export(module, module.example_inputs(2), str(path), input_names=list(INPUTS),
                              output_names=list(OUTPUTS), opset_version=opset, dynamo=True, external_data=False,
                              dynamic_shapes={"token": {0: batch}, "h": {1: batch}, "c": {1: batch}}, verbose=False)
        except Exception as e:
            raise cli.RunFailed(f"torch.onnx.export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}) "
                                f"{quiet.text.getvalue()[-300:]}") from e
    model = onnx.load(str(path))
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise cli.RunFailed(f"the exporter wrote opset {got}, not the {opset} asked for; try --opset {got}")
    model.doc_string = ("arlm: one step of an LSTM language model. Inputs token int64 [B], h and c float32 [L,B,H]; "
                        "outputs log_probs [B,V], h_next, c_next [L,B,H], gates [L,4,B,H] (f, i, c~, o).")
    props = {"arlm.format": "arlm-step", "arlm.version": "1", "num_layers": module.num_layers,
             "hidden_size": module.hidden_size, "vocab_size": module.vocab_size, "eos_id": module.eos_id,
             "reset_at_eos": module.reset_at_eos, "opset": opset, **(metadata or {})}
    onnx.helper.set_model_props(model, {k: json.dumps(v) if not isinstance(v, str) else v for k, v in props.items()})
    onnx.save(model, str(path))
    return path


def quantize_int8(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """onnxruntime's dynamic quantization: every MatMul weight int8 with one scale per output
    column, the embedding uint8 with one scale (the row read is dequantized); the inputs of
    each product are quantized on the fly, per step. The weights use 7 of their 8 bits
    (`reduce_range`): on x86 CPUs without VNNI (AVX2, early AVX-512) onnxruntime multiplies
    u8 inputs by s8 weights with an instruction that saturates its pairwise sums, and with
    full-range weights the top-5 next words of a small model agreed at half the positions
    (92.5% with 7 bits; tests/test_export.py). Returns the path written."""
    (ort,) = require("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _Quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    return Path(target)


def session(path: str | os.PathLike, threads: int = 0):
    """An onnxruntime CPU session for a step file (`threads` 0: onnxruntime's default)."""
    (ort,) = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxStepper:
    """Walk texts through a step file with onnxruntime: the caller's side of the interface."""

    def __init__(self, sess, num_layers: int, hidden_size: int):
        self.sess, self.L, self.H = sess, num_layers, hidden_size

    @classmethod
    def open(cls, path: str | os.PathLike, threads: int = 0) -> "OnnxStepper":
        sess = session(path, threads)
        shape = sess.get_inputs()[1].shape  # [L, batch, H]
        return cls(sess, int(shape[0]), int(shape[2]))

    def zeros(self, batch: int):
        import numpy as np

        z = np.zeros((self.L, batch, self.H), dtype=np.float32)
        return z, z.copy()

    def step(self, tokens, h, c):
        """tokens (B,) ints → (log_probs (B, V), h_next, c_next, gates) as numpy arrays."""
        import numpy as np

        return self.sess.run(None, {"token": np.asarray(tokens, dtype=np.int64), "h": h, "c": c})

    def walk(self, ids: list[int]):
        """Read ids one by one from the zero state; yields each step's outputs."""
        h, c = self.zeros(1)
        for i in ids:
            lp, h, c, gates = self.step([i], h, c)
            yield lp[0], h, c, gates


# --- measuring the int8 copy -------------------------------------------------------------


@dataclasses.dataclass
class Quality:
    """Perplexity of the same documents by arlm (float32), the ONNX float32 file and its int8
    copy, and how often the int8 file's 5 (and 1) most likely next tokens are torch's."""

    source: str
    documents: int
    tokens: int
    ppl_arlm: float
    ppl_onnx: float
    ppl_int8: float | None = None
    top5_agreement: float | None = None
    top1_agreement: float | None = None
    max_logprob_diff: float = 0.0  # ONNX float32 against torch, over every position and token

    @property
    def int8_change(self) -> float | None:
        return None if self.ppl_int8 is None else self.ppl_int8 / self.ppl_arlm - 1


def _ppl(total_logprob: float, n: int) -> float:
    mean = -total_logprob / max(1, n)
    return math.exp(mean) if mean < 700 else math.inf


def measure(lm, documents: list[str], float_file: Path, int8_file: Path | None = None, source: str = "",
            batch: int = 32, threads: int = 0) -> Quality:
    """Score `documents` with arlm (`lm.score`, float32) and with the ONNX files run token by
    token by onnxruntime, many documents side by side in one batch (each its own lane). Also
    compares every position's top-5 next tokens of the int8 file with torch's."""
    import numpy as np

    docs = [d for d in documents if d.strip()]
    if not docs:
        raise ValueError(f"{source or 'the evaluation text'}: no documents to measure on")
    eos = lm.tokenizer.eos_id
    reference = [lm.score(d) for d in docs]
    n_tokens = sum(r["num_tokens"] for r in reference)
    ppl_arlm = _ppl(math.fsum(r["total_logprob"] for r in reference), n_tokens)
    sequences = [[eos] + lm.tokenizer.encode(d) for d in docs]
    order = sorted(range(len(sequences)), key=lambda k: len(sequences[k]))  # lanes of similar length
    steppers = {"onnx": OnnxStepper.open(float_file, threads)}
    if int8_file is not None:
        steppers["int8"] = OnnxStepper.open(int8_file, threads)
    totals = {name: [] for name in steppers}
    agree5 = agree1 = positions = 0
    max_diff = 0.0
    engine = lm.engine
    for start in range(0, len(order), batch):
        lanes = [sequences[k] for k in order[start:start + batch]]
        T, B = max(map(len, lanes)), len(lanes)
        ids = np.full((T, B), eos, dtype=np.int64)           # finished lanes read <eos>: never scored
        targets = np.full((T, B), -1, dtype=np.int64)
        for b, seq in enumerate(lanes):
            ids[: len(seq), b] = seq
            targets[: len(seq), b] = seq[1:] + [eos]
        valid = targets >= 0
        with torch.inference_mode():
            features = engine(torch.from_numpy(ids)).features  # (T, B, E): torch's own walk
        states = {name: s.zeros(B) for name, s in steppers.items()}
        span = max(1, 1024 // B)  # torch's log-probabilities for `span` steps at once: one big product
        for t0 in range(0, T, span):
            with torch.inference_mode():
                refs = engine.log_probs(features[t0:t0 + span]).numpy()  # (span, B, V)
            for t in range(t0, min(T, t0 + span)):
                lanes_t = np.flatnonzero(valid[t])
                ref = refs[t - t0, lanes_t]
                for name, s in steppers.items():
                    lp, h, c, _ = s.step(ids[t], *states[name])
                    states[name] = (h, c)
                    lp = lp[lanes_t]
                    totals[name].append(lp[np.arange(len(lanes_t)), targets[t, lanes_t]].astype(np.float64))
                    if name == "onnx":
                        max_diff = max(max_diff, float(np.abs(lp - ref).max()))
                    else:
                        top_ref = np.argpartition(-ref, 5, axis=1)[:, :5]
                        top_q = np.argpartition(-lp, 5, axis=1)[:, :5]
                        agree5 += sum(set(a) == set(b) for a, b in zip(top_ref.tolist(), top_q.tolist()))
                        agree1 += int((ref.argmax(1) == lp.argmax(1)).sum())
                        positions += len(lanes_t)
    ppl = {name: _ppl(math.fsum(float(v.sum()) for v in chunks), n_tokens) for name, chunks in totals.items()}
    q = Quality(source, len(docs), n_tokens, ppl_arlm, ppl["onnx"], max_logprob_diff=max_diff)
    if int8_file is not None:
        q.ppl_int8 = ppl["int8"]
        q.top5_agreement, q.top1_agreement = agree5 / positions, agree1 / positions
    return q


# --- the folder's other files ------------------------------------------------------------


def vocab_spec(tokenizer, model_config, opset: int, files: dict[str, str]) -> dict:
    """vocab.json: the tokens in id order, the special ids, how text becomes tokens, and the
    step file's shape (what a caller needs to build the zero state)."""
    spec = {
        "format": "arlm-vocab", "version": 1,
        "kind": tokenizer.config.kind,
        "split_digits": bool(tokenizer.config.split_digits),
        "special": {"pad": tokenizer.pad_id, "unk": tokenizer.unk_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id},
        "vocab_size": tokenizer.vocab_size,
        "tokens": [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)],
        "model": {
            "num_layers": model_config.num_layers, "hidden_size": model_config.hidden_size,
            "vocab_size": model_config.vocab_size, "eos_id": model_config.eos_id,
            "reset_at_eos": bool(model_config.reset_at_eos), "opset": opset, "files": files,
            "inputs": {"token": ["batch"], "h": ["num_layers", "batch", "hidden_size"],
                       "c": ["num_layers", "batch", "hidden_size"]},
            "outputs": {"log_probs": ["batch", "vocab_size"], "h_next": ["num_layers", "batch", "hidden_size"],
                        "c_next": ["num_layers", "batch", "hidden_size"],
                        "gates": ["num_layers", 4, "batch", "hidden_size"]},
            "gates": ["f", "i", "c_tilde", "o"],
        },
    }
    if tokenizer.config.kind == "sentencepiece":
        spec["sentencepiece"] = {"model_file": "spm.model", "order": getattr(tokenizer, "order", None)}
    return spec


def normalize_spec(normalize_config) -> dict:
    """normalize.json: the page builder's spec (config and character table) when arlm.webpage
    provides one, else the normalization config alone."""
    builder = _webpage("normalize_spec")
    if builder is not None:
        return builder(normalize_config)
    return {"config": dataclasses.asdict(normalize_config)}


def _webpage(name: str):
    """A function of arlm.webpage, or None when that package (or the function) is not there."""
    try:
        module = importlib.import_module("arlm.webpage")
    except ModuleNotFoundError as e:
        if e.name in ("arlm.webpage", "arlm"):
            return None
        raise  # arlm.webpage is there but needs something missing: its own error
    return getattr(module, name, None)


def _run_summary(path: Path, directory: Path) -> tuple[dict | None, Path | None]:
    for candidate in (path, directory.parent):
        f = candidate / "summary.json"
        if f.is_file():
            try:
                return json.loads(f.read_text(encoding="utf-8")), f
            except (OSError, ValueError):
                return None, None
    return None, None


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.1f} MB"


def model_card(*, checkpoint: Path, directory: Path, config: dict, tokenizer, model_config, opset: int,
               files: dict[str, int], quality: Quality | None, quantized: bool, web: bool) -> str:
    """model-card.md: what the model is, how good, how big, and how to run the files."""
    from arlm.corpus import CorpusError, resolve

    run = config.get("run") or {}
    corpus_name = str(run.get("corpus") or config.get("corpus", {}).get("corpus") or "unknown")
    try:
        card = resolve(corpus_name)
        corpus_line = f"{card.title or card.name} (card `{card.name}`), licence: {card.licence}"
        description = " ".join(card.description.split())
    except (CorpusError, OSError, ValueError):
        card, corpus_line, description = None, f"`{corpus_name}` (no corpus card found here; licence unknown)", ""
    summary, summary_file = _run_summary(checkpoint, directory)
    counts = config.get("corpus", {}).get("tokens") or {}
    c = model_config
    softmax = (f"adaptive (cutoffs {', '.join(map(str, c.effective_cutoffs))}, div {c.adaptive_div:g})"
               if c.uses_adaptive else "full")
    lines = [
        f"# arlm next-word model: {card.name if card is not None else Path(corpus_name).name}",
        "",
        f"An Arabic word-level LSTM language model trained with arlm, exported from `{checkpoint}`"
        f" (step {config.get('step', '?')}) as ONE STEP of the model in ONNX, opset {opset}.",
        "",
        "## Training data",
        "",
        f"- corpus: {corpus_line}",
    ]
    if description:
        lines.append(f"- {description}")
    if counts:
        lines.append("- tokens: " + ", ".join(f"{counts[s]:,} {s}" for s in ("train", "valid", "test") if s in counts))
    norm = dataclasses.asdict(tokenizer.config.normalize)
    default = dataclasses.asdict(type(tokenizer.config.normalize)())
    changed = {k: v for k, v in norm.items() if default.get(k) != v}
    lines += [
        "",
        "## Model",
        "",
        f"- tokenizer: {tokenizer.config.kind}, {tokenizer.vocab_size:,} tokens (ids pad {tokenizer.pad_id}, unk "
        f"{tokenizer.unk_id}, bos {tokenizer.bos_id}, eos {tokenizer.eos_id}), split_digits {tokenizer.config.split_digits}; "
        f"normalization: arlm defaults{' except ' + json.dumps(changed, ensure_ascii=False) if changed else ''} (normalize.json)",
        f"- LSTM: {c.num_layers} layer(s) × {c.hidden_size} units over {c.emb_size}-wide embeddings; "
        f"softmax {softmax}; weights {'tied' if c.tie_weights else 'untied'}; "
        f"{c.parameter_count():,} parameters",
        f"- reset at <eos>: {'yes: the state is zeroed before each <eos> is read' if c.reset_at_eos else 'no'}",
    ]
    lines += ["", "## Quality", ""]
    if summary and summary.get("test_ppl") is not None:
        which = "" if directory.name == "best" or directory == checkpoint else " (the run's best checkpoint)"
        lines.append(f"- perplexity{which}: valid {summary.get('valid_ppl', float('nan')):.2f}, test "
                     f"{summary['test_ppl']:.2f} ({summary.get('test_tokens', '?'):,} test tokens, end of document "
                     f"counted; from {summary_file.name})")
    elif config.get("best_valid_ppl") is not None:
        lines.append(f"- best valid perplexity during training: {config['best_valid_ppl']:.2f} (no summary.json found)")
    else:
        lines.append("- no perplexity recorded with the checkpoint")
    if quality is not None:
        lines.append(f"- measured at export on {quality.source}: {quality.documents:,} documents, {quality.tokens:,} "
                     f"tokens: arlm float32 {quality.ppl_arlm:.3f}, ONNX float32 {quality.ppl_onnx:.3f} (log-probs within "
                     f"{quality.max_logprob_diff:.1e} of torch)")
        if quality.ppl_int8 is not None:
            lines.append(f"- int8 ({INT8_FILE}): perplexity {quality.ppl_int8:.3f}, {100 * quality.int8_change:+.2f}% "
                         f"against float32; top-5 agreement {100 * quality.top5_agreement:.1f}% (the share of "
                         f"positions where its 5 most likely next tokens are float32's 5), top-1 "
                         f"{100 * quality.top1_agreement:.1f}%")
    elif quantized:
        lines.append("- the int8 copy was not measured (--eval-docs 0)")
    lines += ["", "## Files", "", "| file | size | what |", "|---|---|---|"]
    what = {MODEL_FILE: "the step, float32 weights", INT8_FILE: "the step, int8 weights (onnxruntime dynamic quantization)",
            VOCAB_FILE: "tokens in id order, special ids, tokenizer kind, the step's shape",
            NORMALIZE_FILE: "the text normalization to apply before tokenizing", "spm.model": "the sentencepiece model"}
    for name, size in files.items():
        lines.append(f"| `{name}` | {_mb(size)} | {what.get(name, '')} |")
    step_file = INT8_FILE if quantized and (web or MODEL_FILE not in files) else MODEL_FILE
    lines += [
        "",
        f"## The interface (opset {opset})",
        "",
        "| name | type | shape | meaning |",
        "|---|---|---|---|",
        "| `token` (in) | int64 | [B] | the token read at this step |",
        "| `h`, `c` (in) | float32 | [L, B, H] | every layer's state before the step; zeros start a text |",
        "| `log_probs` (out) | float32 | [B, V] | log P(next token) over the whole vocabulary |",
        "| `h_next`, `c_next` (out) | float32 | [L, B, H] | the state after the step: pass it back as `h`, `c` |",
        "| `gates` (out) | float32 | [L, 4, B, H] | each layer's gates f, i, c̃, o at this step |",
        "",
        f"L = {c.num_layers}, H = {c.hidden_size}, V = {c.vocab_size}; B (the batch) is free. A text is read as "
        f"`<eos>` (id {c.eos_id}) followed by its token ids, from zero states, one `run` per token"
        + (", and the step zeroes the state itself before it reads an `<eos>` (a new document), as arlm does." if
           c.reset_at_eos else "."),
        "Text is normalized (normalize.json) and split into words as arlm's tokenizer does; a word outside "
        "`tokens` is `<unk>`. In Python `arlm.load(checkpoint).tokenizer.encode(text)` gives the ids exactly.",
        "",
        "### Python (onnxruntime)",
        "",
        "```python",
        "import json, numpy as np, onnxruntime as ort",
        'vocab = json.load(open("vocab.json", encoding="utf-8"))',
        'ids = {t: i for i, t in enumerate(vocab["tokens"])}',
        f'sess = ort.InferenceSession("{step_file}", providers=["CPUExecutionProvider"])',
        'L, H = vocab["model"]["num_layers"], vocab["model"]["hidden_size"]',
        "h = c = np.zeros((L, 1, H), np.float32)",
        'for t in [vocab["special"]["eos"]] + [ids.get(w, vocab["special"]["unk"]) for w in "قال رسول".split()]:',
        '    log_probs, h, c, gates = sess.run(None, {"token": np.array([t], np.int64), "h": h, "c": c})',
        'print([vocab["tokens"][k] for k in np.argsort(-log_probs[0])[:5]])',
        "```",
        "",
        "### In a browser (onnxruntime-web)",
        "",
        "```js",
        'import * as ort from "onnxruntime-web";',
        'const vocab = await (await fetch("vocab.json")).json();',
        f'const session = await ort.InferenceSession.create("{step_file}");',
        "const { num_layers: L, hidden_size: H } = vocab.model;",
        'let h = new ort.Tensor("float32", new Float32Array(L * H), [L, 1, H]);',
        'let c = new ort.Tensor("float32", new Float32Array(L * H), [L, 1, H]);',
        "let logProbs;",
        "for (const id of [vocab.special.eos, ...ids]) {   // ids: the text's token ids",
        '  const token = new ort.Tensor("int64", BigInt64Array.from([BigInt(id)]), [1]);',
        "  const out = await session.run({ token, h, c });",
        "  h = out.h_next; c = out.c_next; logProbs = out.log_probs.data;   // Float32Array of V",
        "}",
        "```",
    ]
    if web:
        lines += ["", "The page in this folder (index.html) does this; serve the folder over HTTP "
                  "(`python -m http.server -d .`) and open it."]
    lines += ["", f"Exported by arlm-export on {time.strftime('%Y-%m-%d')} with torch {torch.__version__}."]
    return "\n".join(lines) + "\n"


# --- the command -------------------------------------------------------------------------


def verify(engine, path: Path, ids: list[int], tolerance: float = 1e-4) -> float:
    """Walk `ids` through the file with onnxruntime and through the engine; the largest
    difference of any log-probability, state or gate. A file that does not reproduce the
    engine within `tolerance` is a failed export."""
    import numpy as np

    with torch.inference_mode():
        out = engine(torch.tensor(ids).view(-1, 1), record=True)
        ref_lp = engine.log_probs(out.features[:, 0]).numpy()
    worst = 0.0
    for t, (lp, h, c, gates) in enumerate(OnnxStepper.open(path, threads=1).walk(ids)):
        worst = max(worst, float(np.abs(lp - ref_lp[t]).max()))
        for k, trace in enumerate(out.traces):
            worst = max(worst, float(np.abs(h[k, 0] - trace.h[t, 0].numpy()).max()),
                        float(np.abs(c[k, 0] - trace.c[t, 0].numpy()).max()),
                        *(float(np.abs(gates[k, g, 0] - getattr(trace, name)[t, 0].numpy()).max())
                          for g, name in enumerate(("f", "i", "c_tilde", "o"))))
    if not worst <= tolerance:
        raise cli.RunFailed(f"{path.name} does not reproduce the model (a difference of {worst:.2e} > {tolerance:g}); "
                            f"this is a bug in arlm-export or the exporter")
    return worst


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder; choose a folder to export into")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"--out {out}: already exists; pass --overwrite to replace it, or choose another folder")
        if not ((out / VOCAB_FILE).is_file() or (out / CARD_FILE).is_file()):
            raise ValueError(f"--out {out}: holds files that are not an arlm export; refusing to replace it even "
                             f"with --overwrite (choose an empty or new folder)")


def _eval_documents(args, config: dict) -> tuple[list[str], str]:
    n = args.eval_docs
    if args.eval_text:
        with open(args.eval_text, encoding="utf-8") as f:
            docs = [line.strip() for line in f if line.strip()]
        if not docs:
            raise ValueError(f"--eval-text {args.eval_text}: no text in it (one document per line)")
        return docs[:n], f"{args.eval_text} (first {min(n, len(docs))} lines)"
    from arlm.corpus import CorpusError, documents, resolve

    corpus = (config.get("run") or {}).get("corpus")
    if not corpus:
        raise ValueError("the checkpoint does not name its corpus, so the int8 model cannot be measured on its test "
                         "split; pass --eval-text FILE (one document per line), or --eval-docs 0 to skip measuring")
    try:
        test = documents(resolve(corpus, (config.get("run") or {}).get("text_field", "text")))["test"]
    except (CorpusError, OSError) as e:
        raise ValueError(f"the checkpoint's corpus {corpus!r} is not available here ({cli.message(e)[:160]}), so the "
                         f"int8 model cannot be measured on its test split; pass --eval-text FILE (one document per "
                         f"line), or --eval-docs 0 to skip measuring") from None
    return test[:n], f"the first {min(n, len(test))} test documents of corpus {corpus}"


def _page_builder():
    build = _webpage("build_web")
    if build is None:
        raise cli.RunFailed("--format web needs the page builder arlm.webpage.build_web, which this arlm does not "
                            "have yet; use --format onnx")
    return build


def _replace(tmp: Path, out: Path) -> None:
    """Put the finished folder in place of `out` (the old one, if any, removed after)."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _export(args: argparse.Namespace) -> int:
    import arlm
    from arlm import checkpoint

    top = 23
    if not MIN_OPSET <= args.opset <= top:
        raise ValueError(f"--opset must be between {MIN_OPSET} and {top} (got {args.opset})")
    if args.eval_docs < 0:
        raise ValueError(f"--eval-docs must be 0 or more (got {args.eval_docs})")
    web = args.format == "web"
    quantized = (args.quantize or ("int8" if web else "none")) == "int8"
    build_web = _page_builder() if web else None
    require("onnx", "onnxscript", "onnxruntime")
    out = Path(args.out)
    _check_out(out, args.overwrite)
    lm = arlm.load(args.checkpoint)                        # CheckpointError: one line
    directory = checkpoint.model_dir(args.checkpoint)
    config, cfg = lm.config, lm.engine.config
    module = StepModule(lm.engine)                         # an unexportable head: one line
    docs, source = _eval_documents(args, config) if quantized and args.eval_docs else ([], "")
    if module.weight_bytes() > 2e9:
        raise ValueError(f"{directory}: the model has {_mb(module.weight_bytes())} of float32 weights, more than the "
                         f"2 GB an ONNX file holds inside it; arlm-export does not write external weight files")
    weights = module.weight_bytes() / (4 if quantized else 1)
    if web and weights > WEB_LIMIT_MB * 1e6:
        print(f"warning: the page's model has about {_mb(weights)} of weights, more than the {WEB_LIMIT_MB} MB a "
              f"page should download; expect a slow first load (a smaller model, or --quantize int8, helps)",
              file=sys.stderr)
    del module
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        meta = {"corpus": str((config.get("run") or {}).get("corpus", "")), "weights": "float32"}
        model_file = export_onnx(lm.engine, tmp / MODEL_FILE, args.opset, meta)
        probe = [cfg.eos_id] + lm.tokenizer.encode("قال رسول الله صلى الله عليه وسلم") + [cfg.eos_id] + \
            lm.tokenizer.encode("حدثنا ابو بكر")
        worst = verify(lm.engine, model_file, probe)
        print(f"{MODEL_FILE}: {_mb(model_file.stat().st_size)}, opset {args.opset}; reproduces arlm to {worst:.1e}")
        quality = None
        if quantized:
            int8_file = quantize_int8(model_file, tmp / INT8_FILE)
            print(f"{INT8_FILE}: {_mb(int8_file.stat().st_size)} ({int8_file.stat().st_size / model_file.stat().st_size:.0%} "
                  f"of float32)")
            if docs:
                t = time.perf_counter()
                quality = measure(lm, docs, model_file, int8_file, source, threads=args.threads)
                print(f"perplexity on {quality.source} ({quality.tokens:,} tokens): arlm float32 {quality.ppl_arlm:.3f}, "
                      f"ONNX float32 {quality.ppl_onnx:.3f}, ONNX int8 {quality.ppl_int8:.3f} "
                      f"({100 * quality.int8_change:+.2f}%); int8 top-5 = float32 top-5 at "
                      f"{100 * quality.top5_agreement:.1f}% of positions, top-1 at {100 * quality.top1_agreement:.1f}% "
                      f"[{time.perf_counter() - t:.0f} s]")
        if web and quantized:
            model_file.unlink()  # the page loads the int8 file only
        step_files = {k: v for k, v in (("float32", MODEL_FILE), ("int8", INT8_FILE)) if (tmp / v).is_file()}
        spec = vocab_spec(lm.tokenizer, cfg, args.opset, step_files)
        (tmp / VOCAB_FILE).write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        (tmp / NORMALIZE_FILE).write_text(json.dumps(normalize_spec(lm.tokenizer.config.normalize), ensure_ascii=False),
                                            encoding="utf-8")
        if "sentencepiece" in spec:
            shutil.copyfile(directory / "spm.model", tmp / "spm.model")
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        card = model_card(checkpoint=Path(args.checkpoint), directory=directory, config=config, tokenizer=lm.tokenizer,
                          model_config=cfg, opset=args.opset, files=files, quality=quality, quantized=quantized, web=web)
        (tmp / CARD_FILE).write_text(card, encoding="utf-8")
        if web:
            build_web(tmp, quantized)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"exported to {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad option values are one `error: ...` line, like every other bad input."""

    def error(self, message: str):
        raise ValueError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="arlm-export",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a trained arlm checkpoint as ONE STEP of the model in ONNX: inputs token int64 [B],\n"
                    "h and c float32 [L,B,H]; outputs log_probs [B,V], h_next, c_next [L,B,H], gates [L,4,B,H]\n"
                    "(f, i, c~, o). The folder also gets vocab.json, normalize.json and model-card.md.",
        epilog="examples:\n"
               "  arlm-export --checkpoint runs/hadith --out export/hadith\n"
               "  arlm-export --checkpoint runs/hadith --out export/hadith --quantize int8 --overwrite\n"
               "  arlm-export --checkpoint runs/hadith --out web/hadith --format web\n"
               f"needs onnx, onnxscript and onnxruntime: {INSTALL}")
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a model directory, or a training run directory (its best/, else latest/)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write; it must not exist yet, unless --overwrite")
    p.add_argument("--format", choices=("onnx", "web"), default="onnx",
                   help="onnx: the ONNX step, vocab, normalization and model card; web: the same with the int8 step "
                        "only, plus the browser page (arlm.webpage) (default: onnx)")
    p.add_argument("--quantize", choices=("none", "int8"), default=None,
                   help="int8: also write model.int8.onnx (onnxruntime dynamic quantization, int8 weights) and "
                        "measure its perplexity against float32 (default: none for --format onnx, int8 for web)")
    p.add_argument("--opset", type=int, default=OPSET, metavar="N",
                   help=f"the ONNX operator set to write, {MIN_OPSET}-23; recorded in the model card (default: {OPSET})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it already holds an export (default: refuse)")
    p.add_argument("--eval-text", metavar="FILE",
                   help="with int8: measure perplexity on this UTF-8 text, one document per line, instead of the "
                        "checkpoint's test split (for when its corpus is not on this machine)")
    p.add_argument("--eval-docs", type=int, default=EVAL_DOCS, metavar="N",
                   help=f"with int8: how many test documents (or --eval-text lines) to measure on; 0 skips the "
                        f"measurement (default: {EVAL_DOCS})")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="onnxruntime threads for the measurement; 0 lets onnxruntime choose (default: 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The `arlm-export` command: 0 on success, 2 on a bad input, 1 on a failed run (the
    export tools missing included), with one `error: ...` line (arlm/cli.py)."""
    parser = build_parser()

    def body() -> int:
        return _export(parser.parse_args(argv))

    return cli.run(body)


__all__ = ["StepModule", "OnnxStepper", "Quality", "export_onnx", "quantize_int8", "measure", "verify", "session",
           "vocab_spec", "normalize_spec", "model_card", "main", "build_parser", "INPUTS", "OUTPUTS", "OPSET"]


if __name__ == "__main__":
    raise SystemExit(main())
