"""The readable cell and stack (arlm/cell.py, arlm/model.py StackedLSTM): the seed's experiment,
gate ranges, and the round trip through torch.nn.LSTM's layout."""

import torch
from torch import nn

from arlm.cell import LSTMCell
from arlm.model import StackedLSTM


def test_to_torch_round_trip():
    torch.manual_seed(0)
    ours = StackedLSTM(6, 7, 2)
    ref = ours.to_torch()
    x = torch.randn(5, 3, 6)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], atol=1e-5, rtol=0)
    again = StackedLSTM.from_torch(ref)
    for a, b in zip(ours.parameters(), again.parameters()):
        torch.testing.assert_close(a, b)


def test_seed_experiment_hello_learns_to_loss_below_0_01_in_200_steps():
    """The tutorial's experiment on arlm's cell: read "hell", predict "ello"."""
    chars = sorted(set("hello"))
    idx = {ch: k for k, ch in enumerate(chars)}
    x = torch.eye(len(chars))[[idx[ch] for ch in "hell"]].unsqueeze(1)  # (4, 1, 4) one-hot
    y = torch.tensor([idx[ch] for ch in "ello"])
    torch.manual_seed(0)
    cell, fc = LSTMCell(len(chars), 8), nn.Linear(8, len(chars))
    opt = torch.optim.Adam([*cell.parameters(), *fc.parameters()], lr=0.1)
    for _ in range(200):
        hs, _, _ = cell.sequence(x, (torch.zeros(1, 8), torch.zeros(1, 8)))
        loss = nn.functional.cross_entropy(fc(hs[:, 0]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01


def test_gates_are_in_range():
    torch.manual_seed(0)
    cell = LSTMCell(4, 5)
    _, _, tr = cell.sequence(torch.randn(6, 3, 4) * 5, (torch.zeros(3, 5), torch.zeros(3, 5)))
    for g in (tr.f, tr.i, tr.o):
        assert g.min() >= 0 and g.max() <= 1
    for g in (tr.c_tilde, tr.h):
        assert g.min() >= -1 and g.max() <= 1
