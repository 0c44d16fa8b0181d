"""arlm: Arabic next-word language models on a hand-written, inspectable LSTM.

    import arlm
    lm = arlm.load("runs/hadith")          # a checkpoint written by python -m arlm.train
    lm.predict_next("قال رسول", k=5)
"""

__version__ = "0.1.0"


def load(path, device: str = "cpu"):
    """Load a trained model for prediction, generation and gate inspection (see arlm.generate)."""
    from arlm.generate import load as _load

    return _load(path, device)
