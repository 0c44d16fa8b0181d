"""Watch an arlm model's gates: the same as the `arlm-inspect` command.

    python scripts/inspect_gates.py --checkpoint runs/hadith "قال رسول الله صلى الله عليه وسلم"
    python scripts/inspect_gates.py --help
"""

import sys

from arlm.report import main

if __name__ == "__main__":
    sys.exit(main())
