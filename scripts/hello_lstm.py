"""The seed's walk-through, on arlm's own cell: a character LSTM learns "hello".

    python scripts/hello_lstm.py

1. One step of an untrained cell, by the definition (`LSTMCell.forward`): the four gates,
   the new memory c and the new output h for the input 'h'.
2. A character model (`LSTMCell` + a linear layer) reads "hell" and learns to predict
   "ello": one-hot inputs, 8 hidden units, Adam with lr 0.1, 200 steps, seed 0.
3. The trained model reads "hell" again and every gate is printed per time step, with what
   it means. The values come from `LSTMCell.sequence`'s `Trace`: the same recording path
   `arlm-inspect` uses on a word model, so this printout and the Arabic one line up.

The numbers differ from the tutorial's: arlm's cell starts with a forget bias of 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arlm.cell import LSTMCell, Trace

TEXT = "hello"
CHARS = sorted(set(TEXT))                      # ['e', 'h', 'l', 'o']
INDEX = {ch: k for k, ch in enumerate(CHARS)}
# The seed's labels and meanings, one per gate, in the order of arlm.cell.Trace.
ROWS = (("f", "forget f_t", "(how much old memory to KEEP)"),
        ("i", "input  i_t", "(how much new info to WRITE)"),
        ("c_tilde", "cand.  c̃_t", "(the new content proposed)"),
        ("o", "output o_t", "(how much memory to EXPOSE)"),
        ("c", "cell   c_t", "← long-term memory after this step"),
        ("h", "hidden h_t", "← what gets passed on / predicted from"))


def one_hot(ch: str) -> Tensor:
    return F.one_hot(torch.tensor(INDEX[ch]), len(CHARS)).float()


class CharLSTM(nn.Module):
    """The seed's CharLSTM, on arlm's cell: the gates, then hidden state → scores over chars."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.cell = LSTMCell(vocab_size, hidden_size)
        self.fc = nn.Linear(hidden_size, vocab_size)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Trace]:
        """inputs (seq_len, batch, vocab) → scores (seq_len, batch, vocab) and the Trace."""
        zeros = inputs.new_zeros(inputs.shape[1], self.cell.hidden_size)  # blank h_0 and c_0
        hs, _, trace = self.cell.sequence(inputs, (zeros, zeros.clone()))
        return self.fc(hs), trace


def data() -> tuple[Tensor, Tensor]:
    """inputs "hell" as one-hot (4, 1, 4) and targets "ello" as indices (4,)."""
    inputs = torch.stack([one_hot(ch) for ch in TEXT[:-1]]).unsqueeze(1)
    targets = torch.tensor([INDEX[ch] for ch in TEXT[1:]])
    return inputs, targets


def train(steps: int = 200, lr: float = 0.1, hidden_size: int = 8, seed: int = 0,
          log_every: int = 20, log=print) -> tuple[CharLSTM, list[float]]:
    torch.manual_seed(seed)
    model = CharLSTM(len(CHARS), hidden_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    inputs, targets = data()
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        logits, _ = model(inputs)
        loss = F.cross_entropy(logits.view(-1, len(CHARS)), targets)
        loss.backward()                        # backpropagation through time, by arlm's hand-written backward
        optimizer.step()                       # update all four gates' weights
        losses.append(loss.item())
        if log_every and step % log_every == 0:
            log(f"epoch {step:3d} loss {loss.item():.4f}")
    return model, losses


def step_by_hand() -> None:
    """One step of an untrained cell with 4 units, by the definition (LSTMCell.forward)."""
    torch.manual_seed(0)
    cell = LSTMCell(len(CHARS), 4)
    h = c = torch.zeros(1, 4)                  # blank short- and long-term memory
    with torch.no_grad():
        h, c, (f, i, c_tilde, o) = cell(one_hot("h").unsqueeze(0), (h, c))
    for name, v in (("forget gate f :", f), ("input gate i  :", i), ("candidate c̃   :", c_tilde),
                    ("output gate o :", o), ("cell state c  :", c), ("hidden state h:", h)):
        print(f"  {name} {v}")


def show(model: CharLSTM) -> None:
    """The trained model reads "hell"; every gate at every step, with what it means."""
    inputs, _ = data()
    with torch.no_grad():
        logits, trace = model(inputs)
    for t, ch in enumerate(TEXT[:-1]):
        guess = CHARS[int(logits[t, 0].argmax())]
        print(f"\n──── timestep {t}: reading '{ch}' → predicts '{guess}' ────")
        for gate, label, meaning in ROWS:
            print(f" {label} : {getattr(trace, gate)[t, 0]} {meaning}")


def main() -> None:
    torch.set_printoptions(precision=2, sci_mode=False)
    print("1. one step of an untrained cell (LSTMCell.forward, the definition)")
    step_by_hand()
    inputs, targets = data()
    print(f"\n2. learning '{TEXT}': inputs '{TEXT[:-1]}' {tuple(inputs.shape)}, targets '{TEXT[1:]}' {targets.tolist()}")
    model, _ = train()
    print(f"\n3. the trained model reads '{TEXT[:-1]}' (LSTMCell.sequence → Trace)")
    show(model)


if __name__ == "__main__":
    main()
