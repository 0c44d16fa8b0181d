"""arlm: Arabic next-word language models on a hand-written, inspectable LSTM.

    import arlm
    lm = arlm.load("runs/hadith")          # a checkpoint written by python -m arlm.train
    lm.predict_next("قال رسول", k=5)
"""

__version__ = "0.1.0"


def load(path, device: str = "cpu", weights: str = "float32", ngram: bool | None = None):
    """Load a trained model for prediction, generation and gate inspection (see arlm.generate).
    weights="int8" or "float16" decodes faster on a CPU; ngram: mix in the n-gram saved
    beside the weights by `python -m arlm.ngram --mix` (None: when it is there; see
    arlm.generate.load)."""
    from arlm.generate import load as _load

    return _load(path, device, weights, ngram)
