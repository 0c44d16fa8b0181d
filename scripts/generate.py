#!/usr/bin/env python
"""Next-word tables, sampled text and beam search from a trained arlm checkpoint.

    python scripts/generate.py --checkpoint runs/hadith --prompt "قال رسول" --next-word 5

A thin wrapper around `arlm.generate.main` (the same as the `arlm-generate` command);
run with --help for every option.
"""

import sys
from pathlib import Path

# Lets the script run from a checkout where the package is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arlm.generate import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
