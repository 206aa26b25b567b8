r"""Write the top-level model_card.md from trained run folders (the one-image CPU latency is measured here).

Usage (from the repository root, with the run folders that train.py wrote):
    python scripts/model_card/make_model_card.py \\
        "TASK=NAME=runs/pneu-effl0;TASK=NAME=runs/pneu-effl0-ft;..." "NAME=models/pneumonia;..." \\
        scripts/model_card/defaults.json scripts/model_card/notes.json [--image IMAGE] \\
        [--backbones "TASK=models/backbones.json"]

TASK is the section title, NAME the row name; defaults.json holds each section's "which is the default and why"
paragraph, notes.json the list of notes. `--backbones` puts the backbone comparison that
`python -m xray backbones --out` wrote under that task's section (the same table as the Models page). A run
whose metrics.json holds a per-data-source table (train.py, or `train.py --reevaluate RUN --out NEW` for an older
run) gets its table, shortcut probe and sampling facts too.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the xray package is the repository's own

from xray.training.card import build_comparison  # noqa: E402
from xray.web.backbones import markdown_lines, read_table  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="TASK=NAME=DIR;... (one per trained model)")
    parser.add_argument("shipped", help="NAME=BUNDLED_DIR;... (the defaults shipped in models/)")
    parser.add_argument("defaults", type=Path)
    parser.add_argument("notes", type=Path)
    parser.add_argument("--image", type=Path, default=None, help="image timed for the CPU latency column")
    parser.add_argument("--backbones", default=None, help="TASK=JSON: the backbone comparison under that task")
    args = parser.parse_args()
    sections = {}
    if args.backbones:
        task, path = args.backbones.rsplit("=", 1)
        table = read_table(path)
        if table is None:
            parser.error(f"{path} holds no backbone comparison")
        sections[task] = markdown_lines(table)
    runs = [tuple(r.split("=", 2)) for r in args.runs.split(";")]
    shipped = dict(s.split("=", 1) for s in args.shipped.split(";"))
    image = args.image or sorted((ROOT / "examples").glob("person*.jpeg"))[0]
    print(build_comparison(runs, ROOT / "model_card.md", latency_image=image, shipped=shipped,
                           defaults=json.loads(args.defaults.read_text()), notes=json.loads(args.notes.read_text()),
                           sections=sections))
