"""Benchmarks: arlm against its references, measured side by side in one run.

    python scripts/benchmark.py cell            # hand-written stack vs torch.nn.LSTM (and cuDNN on a GPU)
    python scripts/benchmark.py e2e             # training tokens/s at a 50k vocabulary vs word_language_model's setup
    python scripts/benchmark.py pipeline        # normalize+tokenize words/s on SaudiNewsNet, 1 core and all cores
    python scripts/benchmark.py inference --checkpoint runs/hadith
    python scripts/benchmark.py autocomplete --checkpoint runs/hadith --subword runs/hadith-sp   # KSR, latency
    python scripts/benchmark.py quality --minutes 30 [-- arlm.train flags]   # SaudiNewsNet: arlm vs Kneser-Ney 3/5-gram
    python scripts/benchmark.py reference --minutes 30   # the word_language_model setup on the same tokens
    python scripts/benchmark.py peer --minutes 30 --peer 4x256:1e-3 4x256:2e-3   # the transformer peer, same tokens
    python scripts/benchmark.py memory          # peak RSS of training on 1x and 10x a corpus (memory-mapped)
    python scripts/benchmark.py cache           # token cache of a 1 GB text file: time, peak memory
    python scripts/benchmark.py soak --checkpoint runs/hadith   # 1,000 requests from 4 threads
    python scripts/benchmark.py cell --compare ../old          # the same part, this code vs another checkout

Every part prints a table and writes JSON under --out (default bench/). Speed is always
reported as a ratio against a reference timed in the same process, interleaved, so a
noisy shared machine moves both numbers together. `--compare DIR` runs the part with this
code and with the arlm checkout in DIR (e.g. `git worktree add ../old <commit>`), each in
its own process and alternating, --rounds times: each process measures its own reference,
so its ratio can be set beside the other code's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from arlm.fast import products  # noqa: E402
from arlm.model import LanguageModel, ModelConfig, StackedLSTM  # noqa: E402
from arlm.optim import RowAdamW, clip_grad_norm  # noqa: E402


def cpu_model() -> tuple[str, str]:
    """The CPU's model name and the vector extensions that decide which C build runs."""
    name, flags, family = platform.processor() or platform.machine(), set(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key == "model name" and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif key in ("cpu family", "model") and key not in family:
                family[key] = line.split(":", 1)[1].strip()
            elif key == "flags":
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if len(family) == 2:  # a VM's model name is often just "AMD EPYC": the family tells Zen 3/4/5 apart
        name += f" (family {family['cpu family']} model {family['model']})"
    wanted = ["avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "avx2", "fma", "f16c", "neon", "asimd"]
    return name, " ".join(f for f in wanted if f in flags)


def machine() -> dict:
    name, vector = cpu_model()
    return {"cpu": name, "vector": vector, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """Median seconds per call of each fn, calls interleaved so machine noise hits all alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            f()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def table(rows: list[dict], cols: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.rjust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(_fmt(r.get(c)).rjust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
    return str(v)


# --- 1. the cell -------------------------------------------------------------------


def bench_cell(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    rows = []
    for H in args.sizes:
        torch.manual_seed(0)
        ref = nn.LSTM(H, H, args.layers).to(device)
        ours = StackedLSTM.from_torch(ref).to(device)
        x = torch.randn(args.seq, args.batch, H, device=device)

        def train_step(m):
            def f():
                y = m(x)[0]
                y.sum().backward()
            return f

        # The ceiling: a train step's multiply-adds at the rate of one big matrix product of
        # the step's own shape (dW = dGᵀ [h, x]), timed in the same run. No implementation
        # of these equations does fewer products, so ref / (macs / rate) bounds any ratio.
        # Torch has two GEMMs on a CPU, its BLAS (MKL on x86) and oneDNN, and on some CPUs one
        # is twice the other (MKL runs AVX2 kernels on AMD's AVX-512 CPUs); the faster sets the
        # ceiling, and the two rates say whether arlm's choice (products.mm) is right here.
        N = args.seq * args.batch
        dG, hx = torch.randn(N, 4 * H, device=device), torch.randn(N, 2 * H, device=device)
        gemms = {"gemm": lambda: dG.t() @ hx}
        if device.type == "cpu" and products.ONEDNN:
            gemms["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(dG.t(), hx.t(), None, "none", [], "")
        t = interleaved({"ours": train_step(ours), "torch": train_step(ref), **gemms}, args.repeats)
        macs = step_macs(args.seq, args.batch, H, H, args.layers)
        rates = {k: N * 4 * H * 2 * H / t[k] for k in gemms}
        rate = max(rates.values())
        rows.append({"hidden": H, "layers": args.layers, "seq": args.seq, "batch": args.batch, "device": device.type,
                     "arlm tok/s": N / t["ours"], "nn.LSTM tok/s": N / t["torch"], "ratio": t["torch"] / t["ours"],
                     "BLAS GMAC/s": rates["gemm"] / 1e9, "oneDNN GMAC/s": rates.get("onednn", float("nan")) / 1e9,
                     "products by": "oneDNN" if device.type == "cpu" and products.onednn_products() else "BLAS",
                     "nn.LSTM % of GEMM": 100 * macs / t["torch"] / rate, "ceiling ratio": t["torch"] / (macs / rate)})
    print(table(rows, ["hidden", "layers", "seq", "batch", "device", "arlm tok/s", "nn.LSTM tok/s", "ratio",
                       "BLAS GMAC/s", "oneDNN GMAC/s", "products by", "nn.LSTM % of GEMM", "ceiling ratio"]))
    return {"rows": rows}


def step_macs(T: int, B: int, I: int, H: int, layers: int) -> int:
    """Multiply-adds of one train step of a stack (input I, hidden H, no input gradient):
    per layer the forward's W·[h, x] and the weight gradient over [h, x] (each 4H(H + I) a
    token), the recurrence's gradient through W_h (4H·H), and, above the first layer, the
    gradient to its input (4H·H)."""
    first = 2 * 4 * H * (H + I) + 4 * H * H
    above = 2 * 4 * H * (H + H) + 4 * H * H + 4 * H * H
    return T * B * (first + (layers - 1) * above)


# --- 2. end to end -----------------------------------------------------------------


def bench_e2e(args) -> dict:
    """Training step throughput at a 50k vocabulary: arlm's default model (hand-written
    stack, adaptive softmax, tied) against pytorch/examples' word_language_model setup
    (nn.LSTM, full softmax, tied, same sizes); and arlm with torch's own adaptive-softmax
    module instead of its C tail clusters (ARLM_CLUSTERS=0), to show what they save."""
    V, E, H, T, B, L = args.vocab, args.emb, args.hidden, args.seq, args.batch, args.layers
    torch.manual_seed(0)
    # Zipf-distributed ids, like real word ranks: the adaptive softmax's saving depends on
    # most tokens being frequent ones.
    ids = torch.distributions.Categorical(probs=1 / torch.arange(1, V + 1).float()).sample((T + 1, B))
    arlm_model = LanguageModel(ModelConfig(vocab_size=V, emb_size=E, hidden_size=H, num_layers=L))
    ref = LanguageModel(ModelConfig(vocab_size=V, emb_size=E, hidden_size=H, num_layers=L, softmax="full", tie_weights=False))
    torch_lstm = nn.LSTM(E, H, L, dropout=0.2 if L > 1 else 0.0)
    arlm_model.embedding.sparse = True  # as arlm.train makes it: row-wise embedding updates, fused AdamW for the rest
    opt_a = RowAdamW(arlm_model.parameters(), lr=1e-3, fused=True)
    opt_r = torch.optim.SGD(list(ref.parameters()) + list(torch_lstm.parameters()), lr=20)

    def step_arlm():
        loss = arlm_model(ids[:-1], targets=ids[1:]).loss
        opt_a.zero_grad()
        loss.backward()
        clip_grad_norm(arlm_model.parameters(), 0.25)
        opt_a.step()

    def step_arlm_torch_clusters():
        before = os.environ.get("ARLM_CLUSTERS")
        os.environ["ARLM_CLUSTERS"] = "0"
        try:
            step_arlm()
        finally:  # the caller's own setting back, whatever it was
            if before is None:
                del os.environ["ARLM_CLUSTERS"]
            else:
                os.environ["ARLM_CLUSTERS"] = before

    def step_ref():  # embedding → nn.LSTM → (projection) → full softmax, as word_language_model
        x = ref.embedding(ids[:-1])
        y, _ = torch_lstm(x)
        if ref.projection is not None:
            y = ref.projection(y)
        # torch's own linear, as word_language_model has it (the model's decoder is arlm's fast.Linear)
        logits = F.linear(y.reshape(-1, y.shape[-1]), ref.decoder.weight, ref.decoder.bias)
        loss = F.cross_entropy(logits, ids[1:].reshape(-1))
        opt_r.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(opt_r.param_groups[0]["params"], 0.25)
        opt_r.step()

    t = interleaved({"arlm": step_arlm, "torch clusters": step_arlm_torch_clusters, "reference": step_ref},
                    args.repeats, warmup=1)
    tokens = T * B
    row = {"vocab": V, "emb": E, "hidden": H, "layers": L, "arlm tok/s": tokens / t["arlm"],
           "torch-clusters tok/s": tokens / t["torch clusters"], "reference tok/s": tokens / t["reference"],
           "ratio": t["reference"] / t["arlm"], "clusters gain": t["torch clusters"] / t["arlm"]}
    print(table([row], list(row)))
    return {"rows": [row]}


# --- 3. text pipeline --------------------------------------------------------------


def bench_pipeline(args) -> dict:
    from arlm.corpus import documents, resolve
    from arlm.normalize import normalize, normalize_reference
    from arlm.tokenizer import TokenizerConfig, WordTokenizer, count_words, word_tokenize
    from camel_tools.tokenizers.word import simple_word_tokenize
    from concurrent.futures import ProcessPoolExecutor

    docs = documents(resolve(args.corpus))["train"][: args.max_docs]
    words = sum(len(d.split()) for d in docs)
    cfg = TokenizerConfig()
    tok, _ = WordTokenizer.from_counts(count_words(docs[:2000], cfg), cfg)

    t = time.perf_counter()
    ref = [simple_word_tokenize(normalize_reference(d), split_digits=True) for d in docs[:2000]]
    ref_words = sum(len(d.split()) for d in docs[:2000])
    t_ref = time.perf_counter() - t
    fast = [word_tokenize(normalize(d)) for d in docs[:2000]]
    identical = fast == ref

    t = time.perf_counter()
    for d in docs:
        tok.encode(d)
    t_one = time.perf_counter() - t
    chunks = [docs[i : i + 500] for i in range(0, len(docs), 500)]
    t = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_encode_chunk, [(tok, c) for c in chunks]))
    t_all = time.perf_counter() - t
    rows = [
        {"path": "camel-tools functions in turn (reference)", "cores": 1, "words/s": ref_words / t_ref},
        {"path": "arlm normalize+tokenize+ids", "cores": 1, "words/s": words / t_one},
        {"path": "arlm normalize+tokenize+ids", "cores": os.cpu_count(), "words/s": words / t_all},
    ]
    print(table(rows, ["path", "cores", "words/s"]))
    print(f"output identical to the camel-tools reference on {len(ref)} documents: {identical}")
    return {"rows": rows, "identical": identical, "documents": len(docs), "words": words}


def _encode_chunk(args):
    tok, texts = args
    return [tok.encode(t) for t in texts]


# --- 4. inference ------------------------------------------------------------------


def bench_inference(args) -> dict:
    """Next-word latency for a 20-word prefix (read from scratch each time) and sampled
    generation tokens/s, on one thread, with float32, float16 and int8 inference weights."""
    import arlm

    from arlm.corpus import documents, resolve

    torch.set_num_threads(1)
    # What memory allows: decoding a token reads every weight once, so a token cannot take
    # less than the weights' bytes over the rate this core streams memory (measured here,
    # on a buffer no cache holds; a model that fits the cache can go faster).
    buffer = torch.ones(64 * 2**20)
    stream = statistics.median(_timed(buffer.sum) for _ in range(7))
    stream_gbs = buffer.numel() * 4 / stream / 1e9
    del buffer
    lm = arlm.load(args.checkpoint)
    words = " ".join(["قال رسول الله صلي الله عليه وسلم"] * 3).split()[:20]
    prefix = " ".join(words)
    # What the smaller weights cost in quality: perplexity on the first documents of the
    # checkpoint's own test split.
    test_docs = documents(resolve(lm.config["run"]["corpus"]))["test"][: args.max_docs or 300]
    rows = []
    for weights in ("float32", "float16", "int8"):
        lm = arlm.load(args.checkpoint, weights=weights)
        scores = [lm.score(d) for d in test_docs]
        ppl = math.exp(-sum(r["total_logprob"] for r in scores) / sum(r["num_tokens"] for r in scores))
        lm.predict_next(prefix, k=10)
        n = 50
        t = time.perf_counter()
        for _ in range(n):
            lm.predict_next(prefix, k=10)
        latency = (time.perf_counter() - t) / n
        lm.generate(prefix, max_new_tokens=20, seed=0, stop_at_eos=False)
        t = time.perf_counter()
        text = lm.generate(prefix, max_new_tokens=500, seed=0, stop_at_eos=False)
        gen_time = time.perf_counter() - t
        mb = decode_bytes(lm.engine) / 1e6
        rows.append({"checkpoint": args.checkpoint, "weights": weights, "threads": 1,
                     "next-word ms (20-word prefix)": latency * 1000, "generated tokens/s": 500 / gen_time,
                     f"test ppl ({len(test_docs)} docs)": ppl, "weight MB a token": mb,
                     "memory-bound tokens/s": stream_gbs * 1e3 / mb})
    print(table(rows, list(rows[0])))
    print(f"streaming read on one core: {stream_gbs:.1f} GB/s")
    return {"rows": rows, "sample": text[:200], "stream GB/s": stream_gbs}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def decode_bytes(engine) -> int:
    """Bytes of weights a decoding step reads: every layer's fused W and every output
    product's weight, in the form the engine multiplies from (embedding rows not counted)."""
    def size(weight, low) -> int:
        t = low.data if low is not None else weight
        return t.numel() * t.element_size()

    total = sum(size(layer.weights.W, layer.low) for layer in engine.layers)
    linears = [engine.projection, engine.decoder] if engine.adaptive is None else \
        [engine.projection, engine.head, *(m for pair in engine.tails for m in pair)]
    return total + sum(size(m.weight, m.low) for m in linears if m is not None)


def bench_cache(args) -> dict:
    """Build the token cache of a ~1 GB text file (the hadith corpus repeated, each copy's
    documents tagged so they stay distinct): time and peak memory of the streaming build."""
    from arlm.corpus import documents, prepare, resolve
    from arlm.tokenizer import TokenizerConfig

    base = documents(resolve("hadith"))
    docs = base["train"] + base["valid"] + base["test"]
    work = Path(args.out) / "cache"
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"corpus-{args.megabytes}mb.txt"
    with open(path, "w", encoding="utf-8") as f:
        k = 0
        while f.tell() < args.megabytes * 2**20:
            for d in docs:
                f.write(f"{d} {k}\n")
            k += 1
    t = time.time()
    p = prepare(str(path), TokenizerConfig(), cache_dir=work / "ids", verbose=True)
    row = {"text MB": path.stat().st_size / 2**20, "tokens": len(p.train) + len(p.valid) + len(p.test),
           "seconds": time.time() - t, "words/s": p.stats["words_per_second"],
           "peak RSS MB (main)": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "peak RSS MB (workers)": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    print(table([row], list(row)))
    return {"rows": [row]}


def bench_soak(args) -> dict:
    """1,000 mixed requests through one loaded model from 4 threads: no errors, the same
    answers as one thread, memory that does not grow."""
    from concurrent.futures import ThreadPoolExecutor

    import arlm

    lm = arlm.load(args.checkpoint)
    prompts = ["قال رسول الله", "حدثنا", "", "؟ ! .", "كلمه_غير_معروفه اخري", "عن ابي هريره قال"]

    def request(n: int):
        p = prompts[n % len(prompts)]
        kind = n % 4
        if kind == 0:
            return lm.predict_next(p, k=5)
        if kind == 1:
            return lm.generate(p, max_new_tokens=8, seed=n, temperature=0.8, top_p=0.9)
        if kind == 2:
            return lm.beam_search(p, beam_size=3, max_new_tokens=5)
        return round(lm.score(p or "قال")["perplexity"], 6)

    n = args.requests
    t = time.perf_counter()
    expected = [request(i) for i in range(n)]
    t_one = time.perf_counter() - t
    rss = []
    with ThreadPoolExecutor(4) as pool:
        t = time.perf_counter()
        got = []
        for start in range(0, n, n // 5):
            got += list(pool.map(request, range(start, min(n, start + n // 5))))
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        t_four = time.perf_counter() - t
    same = sum(a == b for a, b in zip(got, expected))
    row = {"requests": n, "threads": 4, "identical answers": f"{same}/{n}", "1 thread s": t_one, "4 threads s": t_four,
           "peak RSS MB (per fifth)": " ".join(f"{r:.0f}" for r in rss)}
    print(table([row], list(row)))
    return {"rows": [row], "errors": 0, "identical": same == n}


def bench_export(args) -> dict:
    """onnxruntime running the exported step (arlm/export.py) against arlm's own float32 and
    int8 engines, same checkpoint, one thread each (torch threads 1, onnxruntime
    intra_op_num_threads=1), calls interleaved: the next word after a 20-word prefix read
    from scratch (onnxruntime can only read it token by token; arlm reads it its own way,
    `predict_next`), and the cost per generated token (one step with the state carried, the
    whole vocabulary's log-probabilities, then the argmax)."""
    import shutil
    import tempfile

    import arlm
    from arlm import export

    torch.set_num_threads(1)
    lm32 = arlm.load(args.checkpoint)
    lm8 = arlm.load(args.checkpoint, weights="int8")
    folder = Path(tempfile.mkdtemp(prefix="arlm-bench-export-"))
    files = {"float32": export.export_onnx(lm32.engine, folder / export.MODEL_FILE)}
    files["int8"] = export.quantize_int8(files["float32"], folder / export.INT8_FILE)
    onnx = {w: export.OnnxStepper.open(f, threads=1) for w, f in files.items()}
    words = " ".join(["قال رسول الله صلي الله عليه وسلم"] * 3).split()[:20]
    prefix = " ".join(words)
    eos, k, n_gen = lm32.tokenizer.eos_id, 10, 50

    def onnx_next(s):
        def f():
            h, c = s.zeros(1)
            for i in [eos] + lm32.tokenizer.encode(prefix):
                lp, h, c, _ = s.step([i], h, c)
            return np.argpartition(-lp[0], k)[:k]
        return f

    def onnx_generate(s):
        h0, c0 = s.zeros(1)
        for i in [eos] + lm32.tokenizer.encode(prefix):
            lp0, h0, c0, _ = s.step([i], h0, c0)

        def f():
            lp, h, c = lp0, h0, c0
            for _ in range(n_gen):
                lp, h, c, _ = s.step([int(lp[0].argmax())], h, c)
        return f

    def arlm_next(lm):
        return lambda: lm.predict_next(prefix, k=k)

    def arlm_generate(lm):
        with torch.inference_mode():
            out = lm.engine(torch.tensor([eos] + lm.tokenizer.encode(prefix)).view(-1, 1), last_only=True)
            lp0, state0 = lm.engine.log_probs(out.features[-1]), out.state  # (1, V), the prefix's state

        def f():
            with torch.inference_mode():
                lp, state = lp0, state0
                for _ in range(n_gen):
                    lp, state = lm.engine.step(lp.argmax(-1), state)
        return f

    engines = {"arlm float32": lm32, "arlm int8": lm8}
    nxt = interleaved({**{n: arlm_next(lm) for n, lm in engines.items()},
                       **{f"onnxruntime {w}": onnx_next(s) for w, s in onnx.items()}}, args.repeats * 5)
    gen = interleaved({**{n: arlm_generate(lm) for n, lm in engines.items()},
                       **{f"onnxruntime {w}": onnx_generate(s) for w, s in onnx.items()}}, args.repeats)
    sizes = {"arlm float32": None, "arlm int8": None, **{f"onnxruntime {w}": f.stat().st_size / 1e6
                                                         for w, f in files.items()}}
    rows = []
    for name in nxt:
        rows.append({"checkpoint": args.checkpoint, "engine": name, "threads": 1,
                     "next-word ms (20-word prefix)": nxt[name] * 1000,
                     "ms per generated token": gen[name] * 1000 / n_gen,
                     "next-word vs arlm float32": nxt["arlm float32"] / nxt[name],
                     "per-token vs arlm float32": gen["arlm float32"] / gen[name],
                     "file MB": sizes[name] if sizes[name] is not None else "-"})
    print(table(rows, list(rows[0])))
    shutil.rmtree(folder, ignore_errors=True)
    return {"rows": rows, "prefix": prefix, "generated": n_gen}


# --- 4b. autocomplete ---------------------------------------------------------------


class _Typist:
    """Suggestions for a text as typed, from one completer: an arlm model (a typing session),
    or a distribution over the word model's vocabulary (Kneser-Ney, frequency) filtered by
    the word model's prefix index."""

    def __init__(self, name: str, lm=None, distribution=None, index=None, tokenizer=None):
        self.name, self.lm, self.distribution, self.index, self.tokenizer = name, lm, distribution, index, tokenizer
        self.session = lm.session(k=3) if lm is not None else None
        self._cache: dict = {}

    def reset(self) -> None:
        if self.lm is not None:
            self.session = self.lm.session(k=3)

    def suggest(self, text: str) -> list[str]:
        if self.session is not None:
            return [s.word for s in self.session.update(text)]
        split = self.index.split(text)
        ids = tuple(self.tokenizer.encode(split.context))
        log_probs = self._cache.get(ids)
        if log_probs is None:
            log_probs = self._cache[ids] = torch.from_numpy(np.log(self.distribution(list(ids)))).float()
            if len(self._cache) > 64:
                self._cache.pop(next(iter(self._cache)))
        return [s.word for s in self.index.from_distribution(log_probs, split.prefix, 3)]


def _simulate(typist: _Typist, docs: list[list[str]]) -> dict:
    """Type each document word by word, letter by letter; a word is accepted (one keystroke)
    as soon as it is among the top 3; spaces and punctuation are typed as usual."""
    from arlm.complete import _kind

    keys = chars = top1 = top3 = boundaries = 0
    for words in docs:
        typist.reset()
        text = ""
        for w in words:
            cost = len(w)
            if _kind(w) == "word":
                for j in range(len(w)):
                    got = typist.suggest(text + w[:j])
                    if j == 0:
                        boundaries += 1
                        top1 += bool(got) and got[0] == w
                        top3 += w in got
                    if w in got:
                        cost = j + 1
                        break
            keys += cost + 1  # the word (or its acceptance), then a space
            chars += len(w) + 1
            text += w + " "
    return {"completer": typist.name, "KSR": 1 - keys / chars, "top-1": top1 / max(boundaries, 1),
            "top-3": top3 / max(boundaries, 1), "characters": chars}


def _word_level_nll(lm, text: str) -> tuple[list[float], list[bool]]:
    """The NLL of each whitespace word of `text` (the sum over its tokens or pieces; the
    closing <eos> is the last entry), and whether the word model reads it as <unk>."""
    scored = lm.score(text)["tokens"]
    subword = not hasattr(lm.tokenizer, "itos")
    out, unk = [], []
    if subword:
        for piece, lp in scored:
            if piece.startswith("\u2581") or piece == "<eos>" or not out:
                out.append(0.0)
                unk.append(False)
            out[-1] -= lp
        return out, unk
    from arlm.normalize import normalize

    tokens = [t for t, _ in scored]
    words = lm.tokenizer.tokenize(text)  # tokens of each whitespace word, in order
    # the whitespace words of the normalized text: what sentencepiece marks with ▁ too
    per_word = [lm.tokenizer.tokenize(w) for w in normalize(text, lm.tokenizer.config.normalize).split()]
    k = 0
    for pieces in per_word:
        n = len(pieces)
        out.append(-sum(lp for _, lp in scored[k : k + n]))
        unk.append(any(t == "<unk>" for t in tokens[k : k + n]))
        k += n
    out.append(-scored[-1][1])  # <eos>
    unk.append(False)
    assert k == len(words)
    return out, unk


def bench_autocomplete(args) -> dict:
    """Keystroke savings, next-word accuracy, word-level perplexity and typing latency: arlm's
    word model, its subword model, Kneser-Ney 5-gram and a frequency-only completer, on the
    same test documents."""
    import arlm
    from arlm.corpus import documents, resolve
    from arlm.ngram import KneserNey

    from arlm.checkpoint import model_dir
    from arlm.ngram import MIX_FILE

    torch.set_num_threads(1)
    word = arlm.load(args.checkpoint, ngram=False)
    corpus = word.config["run"]["corpus"]
    splits = documents(resolve(corpus))
    test_docs = splits["test"][: args.max_docs or 200]
    typed = [word.tokenizer.tokenize(d) for d in test_docs]
    sub = arlm.load(args.subword, ngram=False) if args.subword else None
    # each model alone, and with the n-gram `python -m arlm.ngram --mix` saved beside it
    models = [("arlm word", word)]
    if (model_dir(args.checkpoint) / MIX_FILE).is_file():
        models.append(("arlm word + n-gram", arlm.load(args.checkpoint, ngram=True)))
    if sub is not None:
        models.append(("arlm subword", sub))
        if (model_dir(args.subword) / MIX_FILE).is_file():
            models.append(("arlm subword + n-gram", arlm.load(args.subword, ngram=True)))
    typists = [_Typist(name, lm) for name, lm in models]
    # Kneser-Ney 5-gram and word frequencies, over the word model's vocabulary and train split
    train_ids = np.concatenate([np.asarray(word.tokenizer.encode(d) + [word.tokenizer.eos_id]) for d in splits["train"]])
    kn = KneserNey(5, word.vocab_size, word.tokenizer.eos_id).fit(train_ids)
    counts = np.bincount(train_ids, minlength=word.vocab_size).astype(np.float64) + 1e-9
    freq = counts / counts.sum()
    index = word.completer
    typists += [_Typist("Kneser-Ney 5-gram", distribution=lambda ids: kn.distribution([word.tokenizer.eos_id] + ids),
                        index=index, tokenizer=word.tokenizer),
                _Typist("frequency only", distribution=lambda ids: freq, index=index, tokenizer=word.tokenizer)]
    rows = []
    vocab_share = float(np.mean([t in word.tokenizer.stoi for doc in typed for t in doc]))
    for typist in typists if "ksr" in args.measures else []:
        t = time.perf_counter()
        row = _simulate(typist, typed)
        row["suggestable words"] = 1.0 if typist.name.startswith("arlm subword") else vocab_share
        row["seconds"] = time.perf_counter() - t
        rows.append(row)
    if rows:
        print(table(rows, list(rows[0])))
    # word-level perplexity: the same whitespace words for every tokenizer
    ppl_rows = []
    unk_mask = None
    for name, lm in models:
        if "ppl" not in args.measures:
            continue
        nll, unk = [], []
        for d in test_docs:
            n, u = _word_level_nll(lm, d)
            nll += n
            unk += u
        if name == "arlm word":
            unk_mask = np.array(unk)
        nll = np.array(nll)
        row = {"model": name, "words": len(nll), "word-level ppl": math.exp(nll.mean())}
        if unk_mask is not None and len(unk_mask) == len(nll):
            row["ppl on words not <unk>"] = math.exp(nll[~unk_mask].mean())
            row["ppl on <unk> words"] = math.exp(nll[unk_mask].mean()) if unk_mask.any() else None
            row["<unk> words"] = int(unk_mask.sum())
        ppl_rows.append(row)
    if ppl_rows:
        print(table(ppl_rows, list(ppl_rows[0])))
    # latency: int8 default model, one core, a typing session over sentences (and with the
    # n-gram mixed in, when the checkpoint has one)
    lat_rows = []
    mixes = [False] + ([True] if any(name == "arlm word + n-gram" for name, _ in models) else [])
    for mix in mixes if "latency" in args.measures else []:
        fast = arlm.load(args.checkpoint, weights="int8", ngram=mix)
        per_key, per_word = [], []
        for words in typed[: args.latency_docs]:
            text = ""
            session = fast.session(k=3)
            for w in words:
                for j in range(1, len(w) + 1):
                    t = time.perf_counter()
                    session.update(text + w[:j])
                    per_key.append(time.perf_counter() - t)
                text += w + " "
                t = time.perf_counter()
                session.update(text)
                per_word.append(time.perf_counter() - t)
        lat_rows.append({"model": "arlm word + n-gram" if mix else "arlm word", "weights": "int8", "threads": 1,
                         "keystrokes": len(per_key),
                         "keystroke p50 ms": 1000 * float(np.percentile(per_key, 50)),
                         "keystroke p99 ms": 1000 * float(np.percentile(per_key, 99)),
                         "finished word p50 ms": 1000 * float(np.percentile(per_word, 50)),
                         "finished word p99 ms": 1000 * float(np.percentile(per_word, 99))})
    if not lat_rows:
        return {"rows": rows, "perplexity": ppl_rows, "corpus": corpus, "test_docs": len(test_docs)}
    print(table(lat_rows, list(lat_rows[0])))
    # the n-gram's part of a finished word: KneserNey.distribution (only the words seen after
    # each context) against the general formula over every word, on the same test contexts
    contexts = [ids[max(0, j - 4):j] for ids in (word.tokenizer.encode(d) for d in test_docs[:20])
                for j in range(len(ids))][:500]
    t = time.perf_counter()
    for c in contexts:
        kn.distribution(c)
    fast_ms = 1000 * (time.perf_counter() - t) / len(contexts)
    every = np.arange(kn.vocab_size, dtype=np.int64)
    t = time.perf_counter()
    for c in contexts[:100]:
        kn._prob(kn._context_ranks(c), every)
    general_ms = 1000 * (time.perf_counter() - t) / len(contexts[:100])
    ngram_row = {"5-gram distribution ms": fast_ms, "general formula ms": general_ms, "ratio": general_ms / fast_ms}
    print(table([ngram_row], list(ngram_row)))
    return {"rows": rows, "perplexity": ppl_rows, "latency": lat_rows, "ngram": ngram_row, "corpus": corpus,
            "test_docs": len(test_docs)}


# --- 5. quality --------------------------------------------------------------------


def bench_quality(args) -> dict:
    """arlm after a fixed wall-clock budget vs Kneser-Ney on the same tokens, the LSTM alone
    and with its 5-gram mixed in."""
    from arlm.corpus import prepare
    from arlm.ngram import KneserNey, fit_mixture
    from arlm.tokenizer import TokenizerConfig

    out = Path(args.out) / "quality"
    run_dir = out / "arlm"
    cmd = [sys.executable, "-m", "arlm.train", "--corpus", args.corpus, "--out", str(run_dir), "--overwrite", "true",
           "--time-budget", str(args.minutes), "--epochs", "100", "--vocab-size", str(args.vocab), *args.train_args]
    print("$", " ".join(cmd), flush=True)
    t = time.time()
    proc = subprocess.run(cmd + ["--threads", str(os.cpu_count())], capture_output=True, text=True)
    wall = time.time() - t
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    data = prepare(args.corpus, TokenizerConfig(vocab_size=args.vocab))
    rows = [{"model": "arlm LSTM", "valid ppl": summary["valid_ppl"], "test ppl": summary["test_ppl"],
             "train minutes": summary["train_seconds"] / 60, "tokens/s": summary["tokens_seen"] / summary["train_seconds"],
             "peak RSS MB": peak_kb / 1024}]
    for order in (3, 5):
        t = time.time()
        kn = KneserNey(order, data.tokenizer.vocab_size, data.tokenizer.eos_id).fit(np.asarray(data.train))
        rows.append({"model": f"Kneser-Ney {order}-gram", "valid ppl": kn.evaluate(np.asarray(data.valid))["perplexity"],
                     "test ppl": kn.evaluate(np.asarray(data.test))["perplexity"], "train minutes": (time.time() - t) / 60})
    kn5 = rows[-1]["test ppl"]
    # arlm's model as arlm.load serves it after `python -m arlm.ngram --mix`: the LSTM with its
    # own 5-gram mixed in, the weight fitted on valid; the n-gram's fit counted as training
    # (the LSTM's scoring of valid and test is evaluation, as for every row).
    mix = fit_mixture(run_dir, 5, max_tokens=len(data.valid) + len(data.test))
    rows.append({"model": "arlm LSTM + its 5-gram (arlm.ngram --mix)", "valid ppl": mix["valid"]["mixture"],
                 "test ppl": mix["test"]["mixture"], "train minutes": rows[0]["train minutes"] + mix["fit_seconds"] / 60,
                 "mixing weight": mix["weight"]})
    for row in (rows[0], rows[-1]):
        row["test / KN5"] = row["test ppl"] / kn5
    print(table(rows, ["model", "valid ppl", "test ppl", "test / KN5", "train minutes", "tokens/s", "peak RSS MB",
                       "mixing weight"]))
    _plot_valid_curve(run_dir / "log.jsonl", out / "valid_vs_time.png")
    return {"rows": rows, "command": " ".join(cmd), "wall_seconds": wall}


def bench_reference(args) -> dict:
    """The pytorch/examples word_language_model setup on the quality benchmark's tokens, for
    the same wall-clock budget: embedding → nn.LSTM (2 × 256, dropout 0.2) → tied full
    softmax, SGD lr 20 with clip 0.25, batch 20, bptt 35, state carried across everything.
    Validation (first 200k valid tokens) every few minutes, its time not counted."""
    from arlm import batching
    from arlm.corpus import prepare
    from arlm.tokenizer import TokenizerConfig

    torch.manual_seed(0)
    data = prepare(args.corpus, TokenizerConfig(vocab_size=args.vocab))
    V, E = data.tokenizer.vocab_size, 256
    emb, lstm, drop = nn.Embedding(V, E), nn.LSTM(E, E, 2, dropout=0.2), nn.Dropout(0.2)
    dec = nn.Linear(E, V)
    dec.weight = emb.weight
    params = list(emb.parameters()) + list(lstm.parameters()) + [dec.bias]
    opt = torch.optim.SGD(params, lr=20.0)
    rows = batching.streams(np.asarray(data.train), 20)
    valid = np.asarray(data.valid[:200_000], dtype=np.int64)

    def run(x, state):
        y, state = lstm(drop(emb(x)), state)
        return dec(drop(y)), state

    def evaluate(ids):
        for m in (emb, lstm, drop):
            m.eval()
        x, y = batching.eval_streams(ids, 10, data.tokenizer.eos_id)
        state, total, n = None, 0.0, 0
        with torch.no_grad():
            for s in range(0, x.shape[1], 35):
                xx = torch.from_numpy(np.ascontiguousarray(x[:, s:s + 35].T))
                yy = torch.from_numpy(np.ascontiguousarray(y[:, s:s + 35].T)).reshape(-1)
                logits, state = run(xx, state)
                keep = yy != batching.IGNORE
                total += nn.functional.cross_entropy(logits.reshape(-1, V)[keep], yy[keep], reduction="sum").item()
                n += int(keep.sum())
        for m in (emb, lstm, drop):
            m.train()
        return math.exp(total / n)

    log, trained, state, pos = [], 0.0, None, 0
    next_eval = args.eval_minutes * 60
    while trained < args.minutes * 60:
        t = time.time()
        if pos >= rows.shape[1] - 1:
            pos, state = 0, None
        x, y = batching.window(rows, pos, 35)
        logits, state = run(x, state)
        state = tuple(s.detach() for s in state)
        loss = nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        opt.step()
        pos += x.shape[0]
        trained += time.time() - t
        if trained >= next_eval or trained >= args.minutes * 60:
            log.append({"seconds": trained, "valid_ppl": evaluate(valid)})
            print(f"{trained / 60:5.1f} min  valid ppl {log[-1]['valid_ppl']:.1f}", flush=True)
            next_eval += args.eval_minutes * 60
    test = evaluate(np.asarray(data.test, dtype=np.int64))
    out = Path(args.out) / "quality"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reference.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    if (out / "arlm" / "log.jsonl").exists():
        _plot_valid_curve(out / "arlm" / "log.jsonl", out / "valid_vs_time.png",
                          {"word_language_model setup": out / "reference.jsonl"})
    row = {"model": "word_language_model setup (nn.LSTM 256×2, tied, full softmax, SGD)",
           "valid ppl (first 200k)": log[-1]["valid_ppl"], "test ppl": test, "train minutes": trained / 60}
    print(table([row], list(row)))
    return {"rows": [row], "log": log}


def bench_peer(args) -> dict:
    """The transformer peer (scripts/peer.py), one run per --peer spec, on the quality
    benchmark's token ids for the same budget on the same cores, scored on the same test
    tokens; arlm's row from the last quality run (same --out) set beside it."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from peer import PeerConfig, perplexity, train

    from arlm.corpus import prepare
    from arlm.tokenizer import TokenizerConfig

    data = prepare(args.corpus, TokenizerConfig(vocab_size=args.vocab))
    V, eos = data.tokenizer.vocab_size, data.tokenizer.eos_id
    train_ids, test_ids = np.asarray(data.train), np.asarray(data.test)
    rows = []
    quality = Path(args.out) / "quality.json"
    if quality.exists():
        q = json.loads(quality.read_text())
        rows += [{"model": r["model"], "test ppl": r["test ppl"], "tokens/s": r.get("tokens/s"),
                  "train minutes": r.get("train minutes")} for r in q["rows"]]
    for spec in args.peer:
        cfg, lr = PeerConfig.parse(spec, V)
        print(f"transformer {spec}: {cfg}", flush=True)
        model, info = train(cfg, lr, train_ids, args.minutes, batch=args.peer_batch, warmup=args.peer_warmup,
                            max_steps=args.max_steps)
        t = time.time()
        ppl = perplexity(model, test_ids, eos)
        rows.append({"model": f"transformer {cfg.layers}×{cfg.width}, {cfg.heads} heads, ctx {cfg.context}, "
                              f"batch {args.peer_batch}, lr {lr:g}" + (f", dropout {cfg.dropout:g}" if cfg.dropout else ""),
                     "parameters": info["parameters"], "test ppl": ppl, "tokens/s": info["tokens"] / info["train_seconds"],
                     "train minutes": info["train_seconds"] / 60, "steps": info["steps"],
                     "epochs": info["tokens"] / len(train_ids), "scoring seconds": time.time() - t})
        print(table(rows[-1:], list(rows[-1])), flush=True)
    kn5 = next((r["test ppl"] for r in rows if r["model"] == "Kneser-Ney 5-gram"), None)
    for r in rows:
        if kn5:
            r["test / KN5"] = r["test ppl"] / kn5
    cols = ["model", "parameters", "test ppl", "test / KN5", "tokens/s", "train minutes", "steps", "epochs"]
    print(table(rows, cols))
    return {"rows": rows}


def _plot_valid_curve(log: Path, png: Path, extra: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, path in {"arlm": log, **(extra or {})}.items():
        recs = [json.loads(line) for line in Path(path).read_text().splitlines()]
        ax.plot([r["seconds"] / 60 for r in recs], [r["valid_ppl"] for r in recs], marker="o", label=name)
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("valid perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


# --- 6. memory ---------------------------------------------------------------------


def bench_memory(args) -> dict:
    """Peak RSS of a short training run on a corpus and on 10 copies of it: the token
    cache is memory-mapped and only the current window is read, so it should not grow."""
    from arlm.corpus import resolve, documents

    base = documents(resolve(args.corpus))
    work = Path(args.out) / "memory"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for copies in (1, 10):
        path = work / f"corpus-x{copies}.txt"
        with open(path, "w", encoding="utf-8") as f:
            for k in range(copies):
                for d in base["train"] + base["valid"] + base["test"]:
                    f.write(f"{d} {k}\n" if copies > 1 else d + "\n")
        # build the token cache first, so the measured run only trains
        subprocess.run([sys.executable, "-m", "arlm.train", "--corpus", str(path), "--out", str(work / "prep"),
                        "--overwrite", "true", "--max-steps", "1", "--eval-interval", "0", "--time-budget", "0"],
                       capture_output=True)
        code = ("import resource,sys; from arlm.train import main; main(sys.argv[1:]); "
                "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        proc = subprocess.run([sys.executable, "-c", code, "--corpus", str(path), "--out", str(work / f"run{copies}"),
                               "--overwrite", "true", "--max-steps", str(args.steps), "--eval-interval", "0",
                               "--time-budget", "0", "--epochs", "1", "--eval-tokens", "20000"],
                              capture_output=True, text=True)
        peak = int(proc.stdout.strip().split("PEAK")[-1]) / 1024
        size = path.stat().st_size / 2**20
        rows.append({"corpus": f"{copies}x {args.corpus}", "text MB": size, "steps": args.steps, "peak RSS MB": peak})
    print(table(rows, ["corpus", "text MB", "steps", "peak RSS MB"]))
    return {"rows": rows}


def compare(args, argv: list[str]) -> int:
    """Run the part with this code and with the checkout in --compare, alternating, and
    print every run's rows side by side (each run's ratio is against its own reference)."""
    rest, skip = [], False
    for a in argv:  # the same arguments, without --compare/--rounds/--out
        if skip:
            skip = False
        elif a in ("--compare", "--rounds", "--out"):
            skip = True
        elif not a.startswith(("--compare=", "--rounds=", "--out=")):
            rest.append(a)
    codes = {"this": ROOT, "other": Path(args.compare).resolve()}
    out = Path(args.out)
    runs: list[dict] = []
    for r in range(args.rounds):
        for name, root in codes.items():
            folder = (out / f"compare-{name}-{r}").resolve()  # the run works in its own checkout
            cmd = [sys.executable, str(root / "scripts" / "benchmark.py"), *rest, "--out", str(folder)]
            subprocess.run(cmd, check=True, cwd=root, stdout=subprocess.DEVNULL)
            result = json.loads((folder / f"{args.part}.json").read_text())
            for row in result["rows"]:
                runs.append({"code": f"{name} ({root.name})", "round": r + 1, **row})
    cols = ["code", "round"] + [c for c in runs[0] if c not in ("code", "round", "checkpoint")]
    print(table(runs, cols))
    result = {"rows": runs, "part": args.part, "machine": machine(), "compared": {k: str(v) for k, v in codes.items()},
              "command": "python scripts/benchmark.py " + " ".join(argv), "date": time.strftime("%Y-%m-%d %H:%M")}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.part}-compare.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["cell", "e2e", "pipeline", "inference", "autocomplete", "quality", "reference", "memory",
                                    "cache", "soak", "export", "peer"])
    p.add_argument("--out", default="bench", help="folder for JSON results (default: bench)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=10, help="timed repetitions per measurement (default: 10)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="cell: hidden sizes (default: 256 512 1024)")
    p.add_argument("--layers", type=int, default=2, help="cell/e2e: layers (default: 2; §5's model has 1)")
    p.add_argument("--seq", type=int, default=35, help="sequence length (default: 35)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--device", default="auto", help="cell: auto (GPU when there is one) or cpu (default: auto)")
    p.add_argument("--vocab", type=int, default=50000, help="e2e/quality: vocabulary size (default: 50000)")
    p.add_argument("--emb", type=int, default=256, help="e2e: embedding size (default: 256)")
    p.add_argument("--hidden", type=int, default=512, help="e2e: hidden size (default: 512)")
    p.add_argument("--corpus", default="saudinewsnet", help="pipeline/quality/memory: corpus (default: saudinewsnet)")
    p.add_argument("--max-docs", type=int, default=20000, help="pipeline: documents to process (default: 20000)")
    p.add_argument("--checkpoint", default="runs/hadith", help="inference: checkpoint (default: runs/hadith)")
    p.add_argument("--minutes", type=float, default=30, help="quality/reference/peer: training budget (default: 30)")
    p.add_argument("--peer", nargs="+", default=["4x256:1e-3"],
                   help="peer: transformer configurations, LAYERSxWIDTH:LR[:DROPOUT] each (default: 4x256:1e-3, no dropout)")
    p.add_argument("--peer-batch", type=int, default=8,
                   help="peer: sequences of its context per step (default: 8, ~1,000 tokens a step, as arlm's 32 × 35)")
    p.add_argument("--peer-warmup", type=int, default=100, help="peer: warm-up steps (default: 100)")
    p.add_argument("--max-steps", type=int, default=0, help="peer: stop after this many steps (0: the --minutes budget only)")
    p.add_argument("--eval-minutes", type=float, default=6, help="reference: minutes between validations (default: 6)")
    p.add_argument("--steps", type=int, default=200, help="memory: training steps per run (default: 200)")
    p.add_argument("--subword", metavar="DIR", help="autocomplete: a sentencepiece checkpoint to compare (default: none)")
    p.add_argument("--latency-docs", type=int, default=200, help="autocomplete: documents typed for latency (default: 200)")
    p.add_argument("--measures", default="ksr,ppl,latency",
                   help="autocomplete: which measures, comma-separated from ksr, ppl, latency (default: all)")
    p.add_argument("--requests", type=int, default=1000, help="soak: requests (default: 1000)")
    p.add_argument("--megabytes", type=int, default=1024, help="cache: size of the text file (default: 1024)")
    p.add_argument("--compare", metavar="DIR", help="also run the part with the arlm checkout in DIR, alternating")
    p.add_argument("--rounds", type=int, default=3, help="--compare: runs of each code (default: 3)")
    args, extra = p.parse_known_args(argv)  # quality: anything else goes to arlm.train
    args.train_args = [a for a in extra if a != "--"]
    if args.train_args and args.part != "quality":
        p.error(f"unrecognized arguments: {' '.join(args.train_args)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        return compare(args, argv if argv is not None else sys.argv[1:])
    result = globals()[f"bench_{args.part}"](args)
    result.update(part=args.part, machine=machine(), command="python scripts/benchmark.py " + " ".join(argv or sys.argv[1:]),
                  date=time.strftime("%Y-%m-%d %H:%M"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.part}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
