"""One prepared run of arlm on a GPU: is the CUDA path right, and how fast is it?

    python scripts/gpu_check.py --out gpu_check.json          on a machine with CUDA (< 5 min)
    python scripts/gpu_check.py --device cpu --quick          a CPU smoke test of the same checks
                                                              (--threads 1 on a busy shared machine)

1. Equality, float32 with TF32 off, to 1e-4 (|a - b| <= 1e-4 + 1e-4 |b|): a StackedLSTM window
   (outputs, final states, every gradient) and a small LanguageModel's loss gradients, on the
   device against the CPU's C paths; then the loss curve of the same model trained for 50 SGD
   steps on random Zipf ids, on the CPU and on the device from the same seed (relative 1e-4),
   and for 50 steps of what arlm.train runs by default (fused AdamW, row-wise embedding
   updates from a sparse gradient, arlm/optim.py).
2. Train-step time (forward, backward, SGD step) of the hand-written stack against cuDNN's
   nn.LSTM: hidden 256/512/1024, seq 35, batch 32, 2 layers, timed interleaved.
3. Generation: arlm.inference.FrozenModel on the device stepping tokens: its log-probs against
   the CPU engine's, and tokens per second.

On CUDA the backend runs its torch-operations path (arlm/fast/torch_loop.py). With --device cpu
the "device" side is that same path on the CPU (the C step switched off), so the smoke test
compares the C paths with the torch-operations path and nn.LSTM's CPU kernel stands in for cuDNN.
Without a GPU (and no --device cpu) it says so in one line and exits 0. Exit status 1: a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arlm.fast import build  # noqa: E402
from arlm.inference import FrozenModel  # noqa: E402
from arlm.model import LanguageModel, ModelConfig, StackedLSTM  # noqa: E402
from arlm.optim import RowAdamW, clip_grad_norm  # noqa: E402

ATOL = RTOL = 1e-4


# --- helpers ---------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def device_side(device: torch.device):
    """Run the device's side of a comparison. On CUDA nothing changes (the backend takes its
    torch-operations path there anyway); on the CPU the C step is switched off, so that the
    same torch-operations path runs."""
    if device.type != "cpu":
        yield
        return
    build.set_enabled(False)
    try:
        yield
    finally:
        build.set_enabled(True)


def cpu_path(H: int, T: int, B: int) -> str:
    """Which path the CPU reference takes for a layer of H units over T x B."""
    k = build.load()
    if k is None:
        return "torch ops"
    return f"C window, {k.isa}" if H % k.lanes == 0 and T * B >= 32 else f"C step, {k.isa}"


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """a (the device's) against b (the CPU's): max |a - b|, and the worst |a - b| as a share of
    the tolerance (atol + rtol |b|): at most 1 passes."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        return {"ok": False, "max_abs": math.inf, "margin": math.inf}
    diff = (a - b).abs()
    same_nonfinite = torch.equal(a.isnan(), b.isnan()) and torch.equal(a[a.isinf()], b[a.isinf()])
    finite = a.isfinite() & b.isfinite()
    d = diff[finite]
    margin = (d / (ATOL + RTOL * b.abs()[finite])).max().item() if d.numel() else 0.0
    return {"ok": bool(same_nonfinite and margin <= 1.0), "max_abs": d.max().item() if d.numel() else 0.0,
            "margin": margin}


def merge(results: dict[str, dict]) -> dict:
    """Several comparisons as one: ok if all are, the worst numbers."""
    return {"ok": all(r["ok"] for r in results.values()), "max_abs": max(r["max_abs"] for r in results.values()),
            "margin": max(r["margin"] for r in results.values())}


def small_config(vocab: int, emb: int, hidden: int, layers: int = 2) -> ModelConfig:
    """A deterministic model: no dropout (CPU and CUDA draw different random masks)."""
    return ModelConfig(vocab_size=vocab, emb_size=emb, hidden_size=hidden, num_layers=layers, dropout=0.0,
                       dropout_input=0.0, dropout_hidden=0.0, dropout_embedding=0.0, weight_drop=0.0,
                       softmax="adaptive", cutoffs=[vocab // 10, vocab // 3], tie_weights=True, eos_id=1)


def zipf_ids(vocab: int, n: int, batch: int, seed: int) -> torch.Tensor:
    """(n, batch) ids drawn with P(id) ∝ 1 / (id + 1): frequency-ordered, like a tokenizer's."""
    g = torch.Generator().manual_seed(seed)
    p = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    return torch.multinomial(p / p.sum(), n * batch, replacement=True, generator=g).view(n, batch)


# --- 1. equality -----------------------------------------------------------------------------


def check_window(device: torch.device, H: int, I: int, T: int, B: int, layers: int = 2) -> dict:
    """A StackedLSTM window with document resets: outputs, final (h, c), and the gradients on
    x, h0, c0 and every weight, device against CPU."""
    torch.manual_seed(H)
    ref = StackedLSTM(I, H, layers)
    dut = copy.deepcopy(ref).to(device)
    x, h0, c0 = torch.randn(T, B, I), torch.randn(layers, B, H), torch.randn(layers, B, H)
    keep = torch.ones(T, B, 1)
    keep[T // 3, 0] = keep[2 * T // 3, B - 1] = 0  # documents start there
    w_y, w_h, w_c = torch.randn(T, B, H), torch.randn(layers, B, H), torch.randn(layers, B, H)

    def run(model, dev):
        xs, h, c = (t.to(dev).requires_grad_() for t in (x, h0, c0))
        y, (hT, cT), _ = model(xs, (h, c), keep=keep.to(dev))
        loss = (y * w_y.to(dev)).sum() + (hT * w_h.to(dev)).sum() + (cT * w_c.to(dev)).sum()
        names = [n for n, _ in model.named_parameters()]
        grads = torch.autograd.grad(loss, [xs, h, c, *model.parameters()])
        return {"output": y, "h_T": hT, "c_T": cT, "d_x": grads[0], "d_h0": grads[1], "d_c0": grads[2],
                **{f"d_{n}": g for n, g in zip(names, grads[3:])}}

    want = run(ref, torch.device("cpu"))
    with device_side(device):
        got = run(dut, device)
    parts = {k: compare(got[k], want[k]) for k in want}
    groups = {"outputs": ["output"], "states": ["h_T", "c_T"], "grads": [k for k in want if k.startswith("d_")]}
    out = merge(parts)
    out.update({g: merge({k: parts[k] for k in ks})["max_abs"] for g, ks in groups.items()})
    out["name"] = f"StackedLSTM window H={H} T={T} B={B} ({cpu_path(H, T, B)} on CPU)"
    out["detail"] = f"outputs {out['outputs']:.1e}  states {out['states']:.1e}  grads {out['grads']:.1e}"
    return out


def check_lm_gradients(device: torch.device, cfg: ModelConfig, T: int, B: int) -> dict:
    """The loss and the gradient on every parameter of a LanguageModel, device against CPU."""
    torch.manual_seed(1)
    ref = LanguageModel(cfg).train()
    dut = copy.deepcopy(ref).to(device)
    data = zipf_ids(cfg.vocab_size, T + 1, B, seed=1)

    def run(model, dev):
        ids = data.to(dev)
        loss = model(ids[:-1], targets=ids[1:]).loss
        names = [n for n, _ in model.named_parameters()]
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return {"loss": loss, **{n: g for n, g in zip(names, grads)}}

    want = run(ref, torch.device("cpu"))
    with device_side(device):
        got = run(dut, device)
    out = merge({k: compare(got[k], want[k]) for k in want})
    out["name"] = f"LanguageModel loss and gradients ({len(want) - 1} tensors)"
    out["detail"] = f"loss {want['loss'].item():.4f}  max |diff| {out['max_abs']:.1e}"
    return out


def train_curve(model: LanguageModel, data: torch.Tensor, T: int, steps: int, device: torch.device,
                rows: bool = False) -> list[float]:
    """`steps` optimizer steps over consecutive windows, the state carried (and cut) between
    them: SGD, or (`rows`) what arlm.train runs by default — fused AdamW with row-wise
    embedding updates from a sparse embedding gradient (arlm/optim.py)."""
    if rows:
        model.embedding.sparse = True
        opt = RowAdamW(model.parameters(), lr=3e-3, fused=True)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
    data = data.to(device)
    state, losses = None, []
    for s in range(steps):
        inp, tgt = data[s * T:(s + 1) * T], data[s * T + 1:(s + 1) * T + 1]
        out = model(inp, state, targets=tgt)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        clip_grad_norm(model.parameters(), 0.5)
        opt.step()
        state = tuple(t.detach() for t in out.state)
        losses.append(out.loss.item())
    return losses


def check_training(device: torch.device, cfg: ModelConfig, T: int, B: int, steps: int, rows: bool = False) -> dict:
    torch.manual_seed(2)
    ref = LanguageModel(cfg).train()
    dut = copy.deepcopy(ref).to(device)
    data = zipf_ids(cfg.vocab_size, steps * T + 1, B, seed=2)
    want = train_curve(ref, data, T, steps, torch.device("cpu"), rows)
    with device_side(device):
        got = train_curve(dut, data, T, steps, device, rows)
    rel = max(abs(a - b) / abs(b) for a, b in zip(got, want))
    kind = "AdamW steps with row-wise embedding updates" if rows else "SGD steps"
    return {"name": f"training loss curve, {steps} {kind} (T={T}, B={B}, hidden {cfg.hidden_size})",
            "ok": rel <= RTOL, "max_rel": rel, "cpu": want, "device": got,
            "detail": f"max rel diff {rel:.1e}  (loss {want[0]:.3f} -> {want[-1]:.3f})"}


# --- 2. train-step throughput --------------------------------------------------------------------


def time_train_steps(device: torch.device, H: int, T: int, B: int, layers: int, rounds: int, iters: int) -> dict:
    """Median seconds per train step (forward, backward, SGD step) of the hand-written stack and
    of nn.LSTM (cuDNN on CUDA), timed in alternating blocks so that drift hits both alike."""
    torch.manual_seed(3)
    ours = StackedLSTM(H, H, layers).to(device)
    theirs = nn.LSTM(H, H, layers).to(device)
    x, w = torch.randn(T, B, H, device=device), torch.randn(T, B, H, device=device)
    opts = {"ours": torch.optim.SGD(ours.parameters(), lr=1e-3), "theirs": torch.optim.SGD(theirs.parameters(), lr=1e-3)}
    models = {"ours": ours, "theirs": theirs}

    def step(name):
        y = models[name](x)[0]
        opts[name].zero_grad(set_to_none=True)
        (y * w).mean().backward()
        opts[name].step()

    times = {"ours": [], "theirs": []}  # on the CPU, ours runs its C paths
    for name in times:  # warm up: allocations, cuDNN plans, oneDNN packing
        for _ in range(2):
            step(name)
    for _ in range(rounds):
        for name in times:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                step(name)
            sync(device)
            times[name].append((time.perf_counter() - t0) / iters)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"hidden": H, "seq": T, "batch": B, "layers": layers, "ours_ms": med["ours"] * 1e3,
            "theirs_ms": med["theirs"] * 1e3, "ours_tok_s": T * B / med["ours"], "theirs_tok_s": T * B / med["theirs"],
            "ratio": med["ours"] / med["theirs"], "samples": rounds * iters}


# --- 3. generation -------------------------------------------------------------------------------


def check_generation(device: torch.device, cfg: ModelConfig, steps: int, batches: list[int]) -> tuple[dict, list[dict]]:
    """The device engine's log-probs over `steps` tokens (sampled from the CPU engine, fed to
    both) against the CPU engine's; then tokens/s of greedy stepping on each."""
    torch.manual_seed(4)
    model = LanguageModel(cfg).eval()
    cpu_engine = FrozenModel(model)
    dev_engine = FrozenModel(model, device=device)
    B = batches[-1]
    g = torch.Generator().manual_seed(4)
    tokens, want = [torch.full((B,), 1, dtype=torch.long)], []
    state = None
    for _ in range(steps):  # the CPU engine samples the text both engines read
        lp, state = cpu_engine.step(tokens[-1], state)
        want.append(lp)
        tokens.append(torch.multinomial(lp.exp(), 1, generator=g).squeeze(1))
    got, state = [], None
    with device_side(device):
        for t in range(steps):
            lp, state = dev_engine.step(tokens[t].to(device), state)
            got.append(lp)
    res = compare(torch.stack(got), torch.stack(want))
    res["name"] = f"FrozenModel log-probs on {device.type} = CPU engine's ({steps} steps, batch {B})"
    res["detail"] = f"max |diff| {res['max_abs']:.1e}"

    def tokens_per_s(engine, dev, batch):
        tok = torch.full((batch,), 1, dtype=torch.long, device=dev)
        state = None
        for _ in range(3):  # warm up
            lp, state = engine.step(tok, state)
        state = None
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            lp, state = engine.step(tok, state)
            tok = lp.argmax(-1)
        sync(dev)
        return steps * batch / (time.perf_counter() - t0)

    speed = []
    for batch in batches:
        with device_side(device):
            dev_tps = tokens_per_s(dev_engine, device, batch)
        speed.append({"batch": batch, "device_tok_s": dev_tps,
                      "cpu_tok_s": tokens_per_s(cpu_engine, torch.device("cpu"), batch)})
    return res, speed


# --- the run -------------------------------------------------------------------------------------


def environment(device: torch.device, argv: list[str]) -> dict:
    k = build.load()
    env = {"command": shlex.join(["python", "scripts/gpu_check.py", *argv]), "device": str(device),
           "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_name(),
           "cpu_threads": torch.get_num_threads(), "c_step": f"{k.isa}, {k.lanes} lanes" if k else "unavailable"}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return env


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke test")
    ap.add_argument("--quick", action="store_true", help="smaller models, fewer steps and sizes (a smoke test)")
    ap.add_argument("--steps", type=int, default=None, help="training steps to compare (default 50; 10 with --quick)")
    ap.add_argument("--out", type=Path, help="also write the report as JSON here")
    ap.add_argument("--threads", type=int, help="CPU threads for torch and the C step (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}); nothing run. "
              "For a CPU smoke test: python scripts/gpu_check.py --device cpu --quick")
        return 0
    if device.type not in ("cuda", "cpu"):
        ap.error(f"--device must be cuda or cpu, got {args.device}")

    # float32 everywhere: no TF32 in products or cuDNN
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    t_start = time.perf_counter()
    q = args.quick
    steps = args.steps or (10 if q else 50)
    env = environment(device, argv)
    dev_label = f"{env.get('gpu', device.type)} (torch ops)" if device.type == "cuda" else "cpu, torch ops"
    print(f"gpu_check: {env['command']}")
    print(f"torch {env['torch']}" + (f"  CUDA {env['cuda']}  cuDNN {env['cudnn']}  GPU {env['gpu']} "
                                     f"({env['gpu_memory_gib']} GiB)" if device.type == "cuda" else "")
          + f"  CPU {env['cpu']} ({env['cpu_threads']} threads, C step {env['c_step']})")

    report: dict = {"environment": env, "quick": q, "tolerance": {"atol": ATOL, "rtol": RTOL}}
    checks = []

    def show(c: dict) -> None:
        checks.append(c)
        print(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}")

    # 1. equality
    print(f"[1] {dev_label} against the CPU's C paths: float32, TF32 off, |diff| <= {ATOL:g} + {RTOL:g}|x|")
    for H, I in ([(32, 16), (20, 12)] if q else [(256, 128), (100, 64)]):
        show(check_window(device, H, I, T=35 if not q else 12, B=8 if not q else 4))
    lm_cfg = small_config(500, 32, 64) if q else small_config(5000, 128, 256)
    T, B = (12, 4) if q else (35, 16)
    show(check_lm_gradients(device, lm_cfg, T, B))
    show(check_training(device, lm_cfg, T, B, steps))
    show(check_training(device, lm_cfg, T, B, steps, rows=True))

    # 2. throughput
    hiddens = [128] if q else [256, 512, 1024]
    rounds, iters = (2, 2) if q else (5, 8)
    other = "cuDNN nn.LSTM" if device.type == "cuda" else "nn.LSTM (CPU)"
    print(f"[2] train step (forward, backward, SGD), seq 35, batch 32, 2 layers: hand-written vs {other} "
          f"(median of {rounds} x {iters}, interleaved)")
    report["throughput"] = []
    for H in hiddens:
        r = time_train_steps(device, H, 35, 32, 2, rounds, iters)
        report["throughput"].append(r)
        print(f"  H={H:<5d} ours {r['ours_ms']:7.2f} ms ({r['ours_tok_s'] / 1e3:7.1f}k tok/s)   "
              f"{other} {r['theirs_ms']:7.2f} ms ({r['theirs_tok_s'] / 1e3:7.1f}k tok/s)   ours/theirs {r['ratio']:.2f}x")

    # 3. generation
    gen_cfg = small_config(500, 32, 64) if q else small_config(20000, 256, 512)
    print(f"[3] generation: FrozenModel(device={device.type!r}) stepping tokens (vocab {gen_cfg.vocab_size}, "
          f"hidden {gen_cfg.hidden_size}, {gen_cfg.num_layers} layers)")
    gen, speed = check_generation(device, gen_cfg, 20 if q else 200, [1, 16])
    show(gen)
    for s in speed:
        print(f"  batch {s['batch']:<3d} {device.type} {s['device_tok_s']:9.0f} tok/s   CPU engine {s['cpu_tok_s']:9.0f} tok/s")
    report["generation"] = speed

    report["checks"] = checks
    report["ok"] = all(c["ok"] for c in checks)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    verdict = "ALL PASSED" if report["ok"] else f"FAILED: {sum(not c['ok'] for c in checks)} of {len(checks)} checks"
    print(f"{verdict} in {report['seconds']} s" + (f"; report in {args.out}" if args.out else ""))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
