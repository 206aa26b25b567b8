"""Command line: `python -m xray SUBCOMMAND ...` (predict, evaluate, users, ...).

Each subcommand has an `_add_<name>(subparsers)` function that declares its arguments and sets `func`,
which calls into the `xray` modules; the logic lives there, not here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="python -m xray", description="Chest X-ray decision support tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_predict(subparsers)
    _add_evaluate(subparsers)
    _add_thresholds(subparsers)
    _add_backbones(subparsers)
    _add_users(subparsers)
    _add_publish(subparsers)
    _add_lungs(subparsers)
    _add_train_lungs(subparsers)
    return parser


def _add_lungs(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lungs", help="write lung masks (255 = lung, at each image's own size) for images")
    p.add_argument("images", nargs="+", help="image or DICOM files")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for DIR/<stem>.png")
    p.add_argument("--overlay", action="store_true", help="also write DIR/<stem>_overlay.png: the outline on the X-ray")
    p.add_argument("--model", default=None, help="lung model name (default: XRAY_LUNG_MODEL, the bundled 'lungs')")
    p.set_defaults(func=_run_lungs)


def _run_lungs(args: argparse.Namespace) -> int:
    from xray.trust.lungs import run_lungs_command

    return run_lungs_command(args)


def _add_train_lungs(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-lungs", help="train and evaluate the lung segmentation model (lung-masks data)")
    p.add_argument("--data", default="../shared/data/lung-masks", help="lung-masks folder (metadata.csv)")
    p.add_argument("--out", default="models/lungs", help="output model folder (also holds checkpoint.pt)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--side", type=int, default=192, help="input side of the network")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 instead of bf16 autocast")
    p.add_argument("--resume", action="store_true", help="carry on from OUT/checkpoint.pt")
    p.add_argument("--stop-after", type=int, default=None, help="end after this many epochs (carry on with --resume)")
    p.add_argument("--limit", type=int, default=None, help="train on at most this many pairs (smoke tests)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate OUT on the validation patients")
    p.set_defaults(func=_run_train_lungs)


def _run_train_lungs(args: argparse.Namespace) -> int:
    from xray.training.lungs import run_train_lungs_command

    return run_train_lungs_command(args)


def _add_publish(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("publish", help="upload a model folder to a Hugging Face hub model repository")
    p.add_argument("folder", help="model folder (e.g. models/pneumonia or a train.py output)")
    p.add_argument("repo_id", help="hub repository, org/name")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--dry-run", action="store_true", help="check the folder and list what would be uploaded")
    p.add_argument("--message", default="Upload chest X-ray classifier", help="commit message")
    p.set_defaults(func=_run_publish)


def _run_publish(args: argparse.Namespace) -> int:
    from xray.errors import XrayError
    from xray.inference.models import publish_model, publish_plan

    try:
        plan = publish_plan(args.folder, args.repo_id, private=args.private)
        print(plan.describe())
        if args.dry_run:
            print("dry run: nothing uploaded")
            return 0
        print(f"published: {publish_model(plan, message=args.message)}")
    except XrayError as exc:
        logging.getLogger("xray").error("%s", exc)
        return 2
    return 0


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="classify image files or folders")
    p.add_argument("paths", nargs="*", help="image/DICOM files or folders (searched recursively); with --ray also "
                   "fsspec URLs (s3://bucket/prefix/, globs)")
    p.add_argument("--model", default=None, help="model name (default: XRAY_DEFAULT_MODEL)")
    p.add_argument("--cam", metavar="DIR", default=None, help="write a Grad-CAM overlay PNG per image to DIR")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    p.add_argument("--csv", metavar="FILE", default=None, help="also write the results as CSV ('-' for stdout)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--population", choices=["Adult", "Child"], default=None,
                   help="the patients' group, for models with one threshold per population: files with a DICOM "
                        "PatientAge use it instead; default Adult, as in the app (each row says which threshold)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write one row per file to FILE.parquet or FILE.csv (a local path or an fsspec URL)")
    ray = p.add_argument_group("Ray (pip install -r requirements-ray.txt)")
    ray.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="score on a Ray cluster: ADDRESS (ray://host:10001, auto), or without one the cluster in "
                     "RAY_ADDRESS or started on this machine, else a new local one; needs --out")
    ray.add_argument("--workers", type=int, default=1, help="scoring actors, each holding the model once")
    ray.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per scoring actor")
    ray.add_argument("--threads-per-worker", type=int, default=None,
                     help="torch threads per actor (default: --cpus-per-worker rounded up)")
    ray.add_argument("--decode-cpus", type=float, default=0.5, help="CPUs Ray reserves per decode task")
    ray.add_argument("--dataset", default=None, metavar="NAME",
                     help="score a Hugging Face dataset (hub id or local folder), streamed; its labels are written "
                     "as true_label")
    ray.add_argument("--split", default="test", help="the --dataset split to score ('' for every split)")
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    if args.ray is not None or args.dataset:
        from xray.analysis.distributed import run_ray_predict_command

        if args.dataset and args.ray is None:
            logging.getLogger("xray").error("--dataset is scored on Ray: add --ray (a local cluster is started).")
            return 2
        items = None
        if args.dataset:
            import functools

            from xray.training.data import load_hf_dataset

            items = functools.partial(load_hf_dataset, args.dataset, streaming=True, split=args.split or None,
                                      decode=False)  # fmt: skip
        return run_ray_predict_command(args, items=items)
    from xray.analysis.batch import run_predict_command

    return run_predict_command(args)


def _add_users(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("users", help="manage doctor accounts (add, list, disable, enable, reset-password)")
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a doctor account (prompts for the password)")
    add.add_argument("name", help="sign-in name (letters, digits, . _ - @)")
    add.add_argument("--display-name", default=None, help="how the app greets the doctor (default: NAME)")
    add.add_argument("--hf-username", default=None, help="Hugging Face user name that may sign in as this doctor")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    actions.add_parser("list", help="list accounts")
    for action, text in (("disable", "stop an account from signing in (records are kept)"), ("enable", "re-enable")):
        q = actions.add_parser(action, help=text)
        q.add_argument("name")
    reset = actions.add_parser("reset-password", help="set a new password (prompts for it)")
    reset.add_argument("name")
    reset.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p.set_defaults(func=_run_users)


def _read_password(args: argparse.Namespace) -> str:
    import getpass

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise SystemExit("No terminal to prompt for the password: pipe it in with --password-stdin.")
    first = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Repeat the password: ") != first:
        raise SystemExit("The passwords differ; nothing was changed.")
    return first


def _run_users(args: argparse.Namespace) -> int:
    from sqlmodel import Session

    from xray.config import get_settings
    from xray.errors import AccountError
    from xray.records import auth, crud
    from xray.web.startup import open_database

    engine = open_database(get_settings(), hint_first_account=False)
    try:
        with Session(engine) as session:
            if args.action == "add":
                password = _read_password(args) if args.password_stdin or not args.hf_username else None
                doctor = auth.add_doctor(
                    session, username=args.name, password=password, display_name=args.display_name,
                    hf_username=args.hf_username,
                )  # fmt: skip
                print(f"Created doctor account '{doctor.username}'.")
            elif args.action == "list":
                doctors = crud.list_doctors(session)
                if not doctors:
                    print("No accounts yet. Create one with: python -m xray users add NAME")
                for d in doctors:
                    status = "active" if d.is_active else "disabled"
                    hub = f"  hf:{d.hf_username}" if d.hf_username else ""
                    print(f"{d.username:<24} {status:<9} {d.created_at:%Y-%m-%d}  {d.display_name}{hub}")
            elif args.action in ("disable", "enable"):
                doctor = auth.set_active(session, username=args.name, active=args.action == "enable")
                print(f"Account '{doctor.username}' {args.action}d.")
            elif args.action == "reset-password":
                auth.require_account(session, args.name)  # fail before prompting for a password
                doctor = auth.reset_password(session, username=args.name, password=_read_password(args))
                print(f"Password of '{doctor.username}' changed.")
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score a model on labelled images (metrics with 95%% CIs, pooled and per data source)"
    )
    p.add_argument("--model", required=True, help="model name (bundled, local-dir:PATH or hf-hub:org/name)")
    p.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="class-per-folder image folder, CSV of path,label[,group[,source]] or covid-chestxray "
                   "folder; repeat for several data sources (each is reported on its own; a folder whose "
                   "metadata.csv names each image's source, as adult-cxr's does, is reported per that source)")
    p.add_argument("--label-map", default=None, metavar="OLD=NEW[,...]",
                   help="rename labels before scoring, e.g. COVID-19=PNEUMONIA for a two-class pneumonia model")
    p.add_argument("--split", choices=("test", "val", "train", "all"), default="test",
                   help="which split to score (test: the source's test folder or patient-held-out test)")
    p.add_argument("--out", metavar="DIR", default=None, help="write metrics.json and plots to DIR")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--seed", type=int, default=0, help="split seed (as used in training)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from xray.training.evaluate import run_evaluate_command

    return run_evaluate_command(args)


def _add_thresholds(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "thresholds", help="choose one threshold per population (children, adults) on the model's validation split"
    )
    p.add_argument("--model", required=True, help="model name (bundled, local-dir:PATH or hf-hub:org/name)")
    p.add_argument("--data", default=None, metavar="ROOT",
                   help="folder holding the model's recorded data folders (default: the recorded paths)")
    p.add_argument("--write", action="store_true",
                   help="store the thresholds in config.json and the per-source table in metrics.json")
    p.add_argument("--report-test", action="store_true",
                   help="then read the test splits once, at the thresholds stored in config.json")
    p.add_argument("--keep-pooled", action="append", default=[], choices=["children", "adults"], metavar="POPULATION",
                   help="this population keeps the pooled threshold (its own is printed, not stored), e.g. when "
                        "its validation specificity at the rule's threshold is unacceptable; repeatable")
    p.add_argument("--min-specificity", type=float, default=None, metavar="SPEC",
                   help="a population whose own threshold has validation specificity below SPEC (0-1) keeps the "
                        "pooled threshold, as --keep-pooled: the fallback rule written before the figures are seen")
    p.add_argument("--replace-kept", action="store_true",
                   help="with --write: let a population that config.json keeps on the pooled threshold get its own "
                        "(refused otherwise, so a rerun without the earlier flags cannot replace it unnoticed)")
    p.set_defaults(func=_run_thresholds)


def _add_backbones(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backbones", help="compare trained backbones on the same validation split and apply the selection rule"
    )
    p.add_argument("--reference", required=True, metavar="MODEL",
                   help="the run whose recorded data and seed define the validation split (every run must share it)")
    p.add_argument("--run", action="append", required=True, metavar="NAME=MODEL",
                   help="a compared run: row name and model (local-dir:PATH, hf-hub:org/name); repeatable")
    p.add_argument("--shipped", required=True, metavar="NAME[=MODEL]",
                   help="the model shipped today, the rule's baseline (e.g. pneumonia)")
    p.add_argument("--data", default=None, metavar="ROOT",
                   help="folder holding the recorded data folders (default: the recorded paths)")
    p.add_argument("--margin", type=float, default=0.01,
                   help="validation AUC a MobileNetV3 may lose to the best run on each source and still be the default")
    p.add_argument("--latency-image", default=None, metavar="IMAGE", help="image timed for the CPU latency column")
    p.add_argument("--out", default=None, metavar="JSON", help="write the comparison here (models/backbones.json)")
    p.set_defaults(func=_run_backbones)


def _run_backbones(args: argparse.Namespace) -> int:
    from xray.training.backbones import run_backbones_command

    return run_backbones_command(args)


def _run_thresholds(args: argparse.Namespace) -> int:
    from xray.training.thresholds import run_thresholds_command

    return run_thresholds_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from xray.errors import XrayError

    try:
        return int(args.func(args) or 0)
    except XrayError as exc:
        # Expected failures (unknown model, unreadable input...) get their message, not a traceback.
        logging.getLogger("xray").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
