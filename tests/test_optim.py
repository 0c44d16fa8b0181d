"""Row-wise embedding updates (arlm/optim.py): the same gradient as a sparse tensor, AdamW's
update on the rows read, dense AdamW's result when every row is read, clipping that
counts every row once."""

import copy

import pytest
import torch

from arlm.config import ModelConfig
from arlm.model import LanguageModel
from arlm.optim import RowAdamW, clip_grad_norm


def tiny_model(softmax="adaptive", tie=True) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(ModelConfig(vocab_size=40, emb_size=16, hidden_size=12, num_layers=2, softmax=softmax,
                                     cutoffs=[10, 25], tie_weights=tie, dropout=0, dropout_input=0, dropout_hidden=0,
                                     dropout_embedding=0.2, weight_drop=0))


def every_row_windows(steps: int, vocab: int = 40) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Windows (T=10, B=5) whose inputs read every vocabulary row."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        ids = torch.cat([torch.randperm(vocab, generator=g), torch.randint(0, vocab, (11 * 5 - vocab,), generator=g)])
        ids = ids.view(11, 5)
        out.append((ids[:-1], ids[1:]))
    return out


def grads(model: LanguageModel, x, y) -> dict:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)  # the same embedding-dropout mask for both
    model(x, targets=y).loss.backward()
    return {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad) for n, p in model.named_parameters()}


@pytest.mark.parametrize("softmax, tie", [("adaptive", True), ("adaptive", False), ("full", False)])
def test_the_sparse_embedding_gradient_is_the_dense_one(softmax, tie):
    dense = tiny_model(softmax, tie)
    sparse = copy.deepcopy(dense)
    sparse.embedding.sparse = True
    x, y = every_row_windows(1)[0]
    x = x.clamp(max=20)  # rows 21.. not read: exactly zero in the dense gradient
    gd, gs = grads(dense, x, y), grads(sparse, x, y)
    assert sparse.embedding.weight.grad.is_sparse
    for name in gd:
        torch.testing.assert_close(gs[name], gd[name], rtol=1e-6, atol=1e-7)


def _train(model, opt, windows, clip=0.25):
    model.train()
    for x, y in windows:
        opt.zero_grad(set_to_none=True)
        model(x, targets=y).loss.backward()
        clip_grad_norm(model.parameters(), clip)
        opt.step()


@pytest.mark.parametrize("fused", [False, True])
def test_row_adamw_equals_dense_adamw_when_every_row_is_read(fused):
    dense = tiny_model()
    rows = copy.deepcopy(dense)
    rows.embedding.sparse = True
    windows = every_row_windows(6)
    torch.manual_seed(5)
    _train(dense, torch.optim.AdamW(dense.parameters(), lr=1e-2, weight_decay=0.1, fused=fused), windows)
    torch.manual_seed(5)
    opt = RowAdamW(rows.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    _train(rows, opt, windows)
    for (name, a), b in zip(dense.named_parameters(), rows.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert opt.state[rows.embedding.weight]["step"].item() == 6


def test_rows_not_read_keep_their_weights_and_moments():
    model = tiny_model(tie=False)  # untied: only the lookup reads embedding rows
    model.embedding.sparse = True
    before = model.embedding.weight.detach().clone()
    opt = RowAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    windows = [(x.clamp(max=29), y) for x, y in every_row_windows(4)]  # rows 30..39 never read
    _train(model, opt, windows)
    w, state = model.embedding.weight.detach(), opt.state[model.embedding.weight]
    assert torch.equal(w[30:], before[30:])
    assert not state["exp_avg"][30:].any() and not state["exp_avg_sq"][30:].any()
    assert (w[:30] != before[:30]).all(dim=1).all()  # every row read moved


def test_row_adamw_is_adamws_formula_on_the_rows_read():
    p = torch.nn.Parameter(torch.randn(6, 3))
    w0 = p.detach().clone()
    opt = RowAdamW([p], lr=0.1, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.5)
    g = torch.randn(2, 3)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[4, 1]]), g, (6, 3))
    opt.step()
    m, v = 0.2 * g, 0.1 * g * g
    expected = w0[[4, 1]] * (1 - 0.05) - 0.1 / 0.2 * m / ((v / 0.1).sqrt() + 1e-3)
    torch.testing.assert_close(p.detach()[[4, 1]], expected)
    assert torch.equal(p.detach()[[0, 2, 3, 5]], w0[[0, 2, 3, 5]])


def test_clipping_counts_a_row_read_twice_once_and_matches_torch_on_the_dense_gradient():
    dense, sparse = tiny_model(), None
    sparse = copy.deepcopy(dense)
    sparse.embedding.sparse = True
    x, y = every_row_windows(1)[0]
    for m in (dense, sparse):
        m.zero_grad()
        torch.manual_seed(3)
        m(x, targets=y).loss.backward()
    assert not sparse.embedding.weight.grad.is_coalesced()  # lookup + shortlist: rows appear twice
    n_dense = torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.01)
    n_sparse = clip_grad_norm(sparse.parameters(), 0.01)
    torch.testing.assert_close(n_sparse, n_dense)
    assert n_dense > 0.01  # it clipped
    for a, b in zip(dense.parameters(), sparse.parameters()):
        torch.testing.assert_close(b.grad.to_dense() if b.grad.is_sparse else b.grad, a.grad, rtol=1e-5, atol=1e-8)


def test_a_dense_adamw_state_resumes_under_row_adamw():
    """The state layouts are AdamW's: a checkpoint's optimizer state from either loads in the other,
    and continuing gives what dense AdamW would (every row read)."""
    windows = every_row_windows(6)
    a = tiny_model()
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, fused=True)
    torch.manual_seed(5)
    _train(a, opt_a, windows[:3])
    b = copy.deepcopy(a)
    b.embedding.sparse = True
    opt_b = RowAdamW(b.parameters(), lr=1e-2, fused=True)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # a copy, as a checkpoint is
    torch.manual_seed(7)
    _train(a, opt_a, windows[3:])
    torch.manual_seed(7)
    _train(b, opt_b, windows[3:])
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)
    back = torch.optim.AdamW(a.parameters(), lr=1e-2, fused=True)
    back.load_state_dict(opt_b.state_dict())  # and back
    assert back.state[a.embedding.weight]["exp_avg"].shape == a.embedding.weight.shape
