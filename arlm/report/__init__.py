"""Showing the gates: terminal views, data files, pictures, an HTML page, and `arlm-inspect`.

    GateRecord (arlm.gates.record) ──▶ tables.py  the seed's per-step printout + a summary table
                                   ──▶ files.py   JSON / CSV (long) / NPZ for your own analysis
                                   ──▶ plots.py   PNG heatmaps and unit plots (Arabic shaped, right to left)
                                   ──▶ page.py    one self-contained HTML page (page.html/.css/.js, no network)
    CorpusStats (arlm.gates.corpus_stats) ──▶ saturation table + scatter, unit-search ranking
    cli.py: the `arlm-inspect` command that runs the model and calls all of the above

    arlm-inspect --checkpoint runs/hadith "قال رسول الله صلى الله عليه وسلم"
    arlm-inspect --checkpoint runs/hadith --file sentences.txt --html gates.html --plot plots/
    arlm-inspect --checkpoint runs/hadith --stats --corpus hadith --max-tokens 20000

Everything here only reads a record; nothing here runs the model except `main`. The names
below are the public ones (`from arlm import report; report.write_html(rec, "g.html")`).
"""

from arlm.report.cli import main
from arlm.report.files import CSV_COLUMNS, read_json, write_csv, write_json, write_npz, write_stats_json
from arlm.report.page import html_report, write_html
from arlm.report.plots import arabic_font, display_text, plot_heatmaps, plot_saturation, plot_units
from arlm.report.tables import format_saturation, format_search, format_steps, format_summary, visible

__all__ = [
    "CSV_COLUMNS", "arabic_font", "display_text", "format_saturation", "format_search", "format_steps",
    "format_summary", "html_report", "main", "plot_heatmaps", "plot_saturation", "plot_units", "read_json",
    "visible", "write_csv", "write_html", "write_json", "write_npz", "write_stats_json",
]
