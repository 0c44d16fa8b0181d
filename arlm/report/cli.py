"""`arlm-inspect`: record a checkpoint's gates on some sentences and show them (terminal,
files, pictures, HTML), and/or measure saturation and search for property units over a corpus.

    arlm-inspect --checkpoint runs/hadith "قال رسول الله صلى الله عليه وسلم"
    arlm-inspect --checkpoint runs/hadith --file sentences.txt --html gates.html --plot plots/
    arlm-inspect --checkpoint runs/hadith --stats --corpus hadith --max-tokens 20000

Errors and exit statuses follow arlm.cli: bad input is one `error: ...` line and status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from arlm import cli
from arlm.gates import GATES
from arlm.report.files import write_csv, write_json, write_npz, write_stats_json
from arlm.report.page import write_html
from arlm.report.plots import plot_heatmaps, plot_saturation, plot_units
from arlm.report.tables import format_saturation, format_search, format_steps, format_summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="arlm-inspect",
        description="Watch an arlm model's LSTM gates: what every unit keeps, writes, proposes and exposes "
                    "at every word, and statistics over a corpus.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  arlm-inspect --checkpoint runs/hadith \"قال رسول الله صلى الله عليه وسلم\"\n"
               "  arlm-inspect --checkpoint runs/hadith --file sentences.txt --summary --html gates.html\n"
               "  arlm-inspect --checkpoint runs/hadith \"...\" --plot plots/ --units-plot 3,17\n"
               "  arlm-inspect --checkpoint runs/hadith --stats --corpus hadith --max-tokens 20000 --plot plots/\n"
               "layers and positions count from 1, units from 0.")
    p.add_argument("sentence", nargs="?", help="the sentence to read (or use --file)")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a model directory or a training run directory")
    p.add_argument("--file", metavar="FILE", help="read one sentence per line (blank lines skipped)")
    p.add_argument("--units", type=int, default=8, metavar="N", help="units shown per gate in the step view (0: all; default 8)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="next-word guesses kept per position (default 5)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--summary", action="store_true", help="print only the compact summary table")
    view.add_argument("--quiet", action="store_true", help="no step view or summary (files written and --stats still print)")
    p.add_argument("--json", metavar="FILE", help="write everything recorded as JSON")
    p.add_argument("--stats-json", metavar="FILE",
                   help="with --stats: write the saturation fractions (per layer, gate and unit) and the unit "
                        "search ranking as JSON")
    p.add_argument("--csv", metavar="FILE", help="write long-format CSV: sentence, position, token, layer, gate, unit, value")
    p.add_argument("--npz", metavar="FILE", help="write padded NumPy arrays (sentences, layers, tokens, units)")
    p.add_argument("--plot", metavar="DIR", help="write PNG heatmaps (and the saturation scatter with --stats)")
    p.add_argument("--units-plot", metavar="U,V,...", help="with --plot: line plots of these units across each sentence")
    p.add_argument("--html", metavar="FILE", help="write one self-contained interactive HTML page")
    p.add_argument("--stats", action="store_true", help="saturation and unit search over a corpus")
    p.add_argument("--corpus", metavar="NAME|FILE",
                   help="for --stats: a corpus card (its valid split) or a text file, one sentence per line "
                        "(default: the corpus the checkpoint was trained on)")
    p.add_argument("--max-tokens", type=int, default=20_000, metavar="N", help="for --stats: tokens read (default 20000)")
    p.add_argument("--regex", metavar="PATTERN", help="for --stats: also search for units that mark tokens matching PATTERN")
    p.add_argument("--search-gates", default="c,h", metavar="G,...",
                   help=f"for --stats: gates searched for property units (from {','.join(GATES)}; default c,h)")
    p.add_argument("--top", type=int, default=5, metavar="N", help="for --stats: units listed per property (default 5)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return p


def _sentences(args: argparse.Namespace) -> list[str]:
    if args.sentence is not None and args.file:
        raise ValueError("give a sentence or --file, not both")
    if args.file:
        lines = [line.strip() for line in Path(args.file).read_text(encoding="utf-8").splitlines()]
        sentences = [line for line in lines if line]
        if not sentences:
            raise ValueError(f"{args.file}: no sentences (the file is empty or blank)")
        return sentences
    if args.sentence is not None:
        if not args.sentence.strip():
            raise ValueError("the sentence is empty; give some Arabic text to read")
        return [args.sentence]
    return []


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what} takes comma-separated unit numbers like 3,17, got {text!r}") from None
    if not values:
        raise ValueError(f"{what} needs at least one unit number")
    return values


def _run(args: argparse.Namespace) -> int:
    from arlm import checkpoint, gates

    # Everything that can be checked without the model is checked before loading it.
    sentences = _sentences(args)
    if not sentences and not args.stats:
        raise ValueError("nothing to inspect: give a sentence, --file FILE, or --stats")
    if (args.corpus or args.regex) and not args.stats:
        raise ValueError("--corpus and --regex are for --stats")
    if args.units_plot and not args.plot:
        raise ValueError("--units-plot needs --plot DIR to write the pictures to")
    units_plot = _int_list(args.units_plot, "--units-plot") if args.units_plot else []
    if args.top_k < 1 or args.top < 1:
        raise ValueError("--top-k and --top must be at least 1")
    search_gates = tuple(g.strip() for g in args.search_gates.split(",") if g.strip())
    bad = [g for g in search_gates if g not in GATES]
    if bad or not search_gates:
        raise ValueError(f"--search-gates: unknown gate(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(GATES)}")
    if args.regex:
        gates.token_properties([], [], args.regex)  # a bad pattern fails here, not after the corpus run

    def wrote(path: Path) -> None:
        print(f"wrote {path}", file=sys.stderr)

    model, tokenizer, config = checkpoint.load(args.checkpoint, args.device)
    H = model.config.hidden_size
    if any(not 0 <= u < H for u in units_plot):
        raise ValueError(f"--units-plot {args.units_plot}: this model's units are 0..{H - 1}")
    subtitle = f"{Path(args.checkpoint)} · {model.config.num_layers} layer(s) × {model.config.hidden_size} units"

    if sentences:
        rec = gates.record(model, tokenizer, sentences, top_k=args.top_k)
        if not args.quiet:
            for n, s in enumerate(rec.sentences, 1):
                if not args.summary:
                    print(format_steps(s, args.units, n))
                    print()
                print(format_summary(s, n))
                print()
        for flag, writer in ((args.json, write_json), (args.csv, write_csv), (args.npz, write_npz)):
            if flag:
                wrote(writer(rec, flag))
        if args.html:
            wrote(write_html(rec, args.html, subtitle=subtitle))
        if args.plot:
            paths = plot_heatmaps(rec, args.plot) + (plot_units(rec, units_plot, args.plot) if units_plot else [])
            print(f"wrote {len(paths)} PNG files to {args.plot}", file=sys.stderr)

    if args.stats:
        corpus = args.corpus or (config.get("run") or {}).get("corpus")
        if not isinstance(corpus, str) or not corpus:
            raise ValueError("--stats needs --corpus NAME|FILE (this checkpoint does not name its training corpus)")
        ids = gates.corpus_ids(corpus, tokenizer, args.max_tokens)
        stats = gates.corpus_stats(model, tokenizer, ids, search_gates)
        results = gates.search_units(stats, args.regex, args.top)
        print(format_saturation(stats))
        print()
        print(format_search(results, stats))
        if args.plot:
            wrote(plot_saturation(stats, Path(args.plot) / "saturation.png"))
        if args.stats_json:
            wrote(write_stats_json(stats, results, args.stats_json))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`arlm-inspect`: 0 on success; bad input is one `error: ...` line and exit status 2
    (usage errors and --help are argparse's own); see arlm.cli for the others."""
    args = _parser().parse_args(argv)
    return cli.run(_run, args)


if __name__ == "__main__":
    sys.exit(main())
