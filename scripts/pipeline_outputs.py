"""Did a change keep the pipeline's results? Dump them on a fixed set of real images, then compare two dumps.

    python scripts/pipeline_outputs.py dump before.json          # on the old checkout
    python scripts/pipeline_outputs.py dump after.json           # on the new one
    python scripts/pipeline_outputs.py compare before.json after.json

`dump` runs `xray.analysis.pipeline.analyse` (prediction, Grad-CAM, input gate, heat check) with each bundled
model on the same seeded sample of `../shared/data`: every full-resolution Kermany validation image and 30 each
of adult-cxr test, covid-chestxray, kermany-224 test, plus 10 lateral views. `compare` prints the largest
probability change, gate verdicts that changed, and per data source the largest and median heat-share changes and
how many heat-check warnings (less than half the heat over the chest) appeared or went.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLES = {"adult-cxr/test/*/*": 30, "covid-chestxray/images/*": 30, "kermany-224/test/*/*": 30, "lateral/*": 10}
SUFFIXES = {".jpg", ".jpeg", ".png", ".dcm"}


def image_set(data: Path, seed: int = 0) -> list[Path]:
    """The fixed sample: all of kermany-val-fullres, then a seeded draw from each folder in `SAMPLES`."""
    rng = random.Random(seed)
    files = sorted(data.glob("kermany-val-fullres/*/*.jpeg"))
    for pattern, count in SAMPLES.items():
        found = sorted(p for p in data.glob(pattern) if p.suffix.lower() in SUFFIXES)
        files += rng.sample(found, min(len(found), count))
    return files


def dump(data: Path, models: list[str]) -> dict[str, dict]:
    """{"model:relative path": outputs} for every model and image of `image_set`."""
    from xray.analysis.pipeline import analyse
    from xray.imaging.io import read_image
    from xray.inference.models import load_model

    out = {}
    files = image_set(data)
    if not files:
        raise SystemExit(f"no images under {data}; pass the shared data folder with --data")
    for name in models:
        loaded = load_model(name)
        for path in files:
            analysis = analyse(loaded, read_image(path))
            check = analysis.heatmap_check
            out[f"{name}:{path.relative_to(data).as_posix()}"] = {
                "probabilities": analysis.probabilities,
                "in_scope": analysis.gate.in_scope,
                "codes": sorted(analysis.gate.codes),
                "heat_in_lungs": check.heat_in_lungs if check else None,
                "heat_in_chest": check.heat_in_chest if check else None,
            }
    return out


def compare(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """Lines describing what changed between two dumps (same keys required)."""
    if set(before) != set(after):
        raise SystemExit("the dumps cover different images or models; dump both with the same data folder")
    lines = [f"{len(before)} image x model pairs"]
    dp = max(abs(before[k]["probabilities"][c] - after[k]["probabilities"][c])
             for k in before for c in before[k]["probabilities"])  # fmt: skip
    lines.append(f"largest probability change: {dp:.3g}")
    changed = [k for k in before if (before[k]["in_scope"], before[k]["codes"]) != (after[k]["in_scope"],
                                                                                  after[k]["codes"])]
    listed = f" ({', '.join(changed[:5])})" if changed else ""
    lines.append(f"gate verdicts or reasons changed: {len(changed)}{listed}")
    from xray.trust.lungs import MIN_HEAT_IN_CHEST

    by_source: dict[str, list[float]] = {}
    flips: dict[str, list[int]] = {}
    for key in before:
        b, a = before[key], after[key]
        if (b["heat_in_lungs"] is None) != (a["heat_in_lungs"] is None):
            lines.append(f"heat check present in one dump only: {key}")
            continue
        if b["heat_in_lungs"] is not None:
            source = key.split(":", 1)[1].split("/", 1)[0]
            change = max(abs(b["heat_in_lungs"] - a["heat_in_lungs"]), abs(b["heat_in_chest"] - a["heat_in_chest"]))
            by_source.setdefault(source, []).append(change)
            warned = (b["heat_in_chest"] < MIN_HEAT_IN_CHEST, a["heat_in_chest"] < MIN_HEAT_IN_CHEST)
            counts = flips.setdefault(source, [0, 0, 0, 0])  # warned before, after, newly warned, no longer warned
            counts[0] += warned[0]
            counts[1] += warned[1]
            counts[2] += warned[1] and not warned[0]
            counts[3] += warned[0] and not warned[1]
    for source, changes in sorted(by_source.items()):
        lines.append(f"heat shares, {source}: largest change {max(changes):.4f} over {len(changes)} pairs")
    for source, changes in sorted(by_source.items()):
        ordered = sorted(changes)
        median = ordered[len(ordered) // 2] if len(ordered) % 2 else sum(ordered[len(ordered) // 2 - 1:][:2]) / 2
        was, now, new, gone = flips[source]
        lines.append(f"heat check, {source}: median change {median:.4f}; warnings {was} -> {now} "
                     f"({new} new, {gone} gone)")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line: `dump OUT.json` or `compare BEFORE.json AFTER.json`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    dumping = sub.add_parser("dump", help="run the pipeline on the fixed image set and write the outputs")
    dumping.add_argument("out", type=Path)
    dumping.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    dumping.add_argument("--models", nargs="+", default=["pneumonia", "covid"])
    comparing = sub.add_parser("compare", help="print what changed between two dumps")
    comparing.add_argument("before", type=Path)
    comparing.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.command == "dump":
        args.out.write_text(json.dumps(dump(args.data, args.models), indent=1) + "\n")
        return 0
    for line in compare(json.loads(args.before.read_text()), json.loads(args.after.read_text())):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
