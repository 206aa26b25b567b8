"""Load benchmark: N signed-in doctors submit M predictions each, concurrently, to a freshly started `app.py`.

The app runs as its own process (`python app.py`, as `make run` starts it) on a temporary data folder and
SQLite database (or --database-url). Afterwards the database is checked: every doctor must own exactly the
records it submitted (none lost, none under another doctor). Prints p50/p95 latency and throughput.

    python scripts/load_test.py                       # 20 clients x 10 predictions, bundled default model
    python scripts/load_test.py --model local-dir:PATH --clients 5 --per-client 4
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _tiny_model(folder: Path) -> str:
    """A randomly initialised mobilenetv3_small_100 (for a quick run when no trained model is installed)."""
    import timm
    import torch

    from xray.inference.models import save_model

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=2)
    return f"local-dir:{save_model(model, folder / 'tiny', label_names=['NORMAL', 'PNEUMONIA'])}"


def _wait_until_up(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"app.py exited with code {process.returncode} before serving")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"app.py did not answer on {url} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 when every record was stored under the right doctor."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20, help="concurrent signed-in doctors (default 20)")
    parser.add_argument("--per-client", type=int, default=10, help="predictions per doctor (default 10)")
    parser.add_argument("--model", default=None, help="model name (default: XRAY_DEFAULT_MODEL, or a tiny random one)")
    parser.add_argument("--database-url", default=None, help="database for the app (default: SQLite in a temp dir)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    args = parser.parse_args(argv)

    from gradio_client import Client, handle_file
    from sqlmodel import Session

    from xray.config import Settings
    from xray.records import auth, crud
    from xray.web.registry import example_files
    from xray.web.startup import open_database

    workdir = Path(tempfile.mkdtemp(prefix="xray-load-"))
    settings = Settings(data_dir=workdir / "data", database_url=args.database_url)
    model = args.model or (settings.default_model if (settings.models_dir / settings.default_model).is_dir() else None)
    model = model or _tiny_model(workdir)
    images = example_files()
    if not images:
        raise SystemExit("examples/ has no sample X-rays")

    engine = open_database(settings)
    accounts = {f"load-{i:02d}": secrets.token_urlsafe(12) for i in range(args.clients)}
    with Session(engine) as session:
        for name, password in accounts.items():
            auth.add_doctor(session, username=name, password=password)

    port = _free_port()
    env = dict(
        os.environ,
        XRAY_DATA_DIR=str(settings.data_dir),
        XRAY_PORT=str(port),
        XRAY_EXTRA_MODELS=model,
        XRAY_DEFAULT_MODEL=model,
        GRADIO_ANALYTICS_ENABLED="False",
    )
    if args.database_url:
        env["XRAY_DATABASE_URL"] = args.database_url
    log = (workdir / "app.log").open("w")
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, server)
        # Warm up (model loading, first Grad-CAM) through Compare, which saves no record.
        first = next(iter(accounts))
        Client(url, auth=(first, accounts[first]), verbose=False, download_files=False).predict(
            handle_file(str(images[0])), "gradcam", api_name="/compare"
        )
        start_line = threading.Barrier(args.clients + 1, timeout=900)
        latencies: list[float] = []
        sign_ins: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()

        def doctor_session(name: str) -> None:
            client = None
            began = time.perf_counter()
            try:
                # 20 simultaneous Argon2 sign-ins take several seconds on a small machine: wait for them.
                client = Client(
                    url, auth=(name, accounts[name]), verbose=False, download_files=False,
                    httpx_kwargs={"timeout": 300},
                )  # fmt: skip
                with lock:
                    sign_ins.append(time.perf_counter() - began)
            except Exception as exc:  # noqa: BLE001 - reported; the others must still be released
                with lock:
                    failures.append(f"{name} could not connect: {exc!r}")
            finally:
                start_line.wait()
            if client is None:
                return
            for i in range(args.per_client):
                image = images[i % len(images)]
                began = time.perf_counter()
                try:
                    client.predict(
                        handle_file(str(image)), f"{name}/patient-{i}", "2024-01-15", model, "gradcam", 0.4,
                        api_name="/diagnose",
                    )  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                    with lock:
                        failures.append(f"{name} #{i}: {exc}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - began)

        with ThreadPoolExecutor(max_workers=args.clients) as pool:
            futures = [pool.submit(doctor_session, name) for name in accounts]
            start_line.wait()
            began = time.perf_counter()
            for future in futures:
                future.result()
            wall = time.perf_counter() - began
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

    # Every record must be under the doctor who submitted it, with that doctor's patient names.
    misplaced = 0
    stored = 0
    with Session(engine) as session:
        for name in accounts:
            doctor = crud.get_doctor(session, username=name)
            records = crud.list_records(session, doctor=doctor)
            stored += len(records)
            misplaced += sum(not r.patient_name.startswith(f"{name}/") for r in records)
            expected = {f"{name}/patient-{i}" for i in range(args.per_client)}
            if {r.patient_name for r in records} != expected or len(records) != args.per_client:
                failures.append(f"{name}: stored {sorted(r.patient_name for r in records)}")
    engine.dispose()

    total = args.clients * args.per_client
    result = {
        "clients": args.clients,
        "per_client": args.per_client,
        "model": model,
        "submitted": total,
        "succeeded": len(latencies),
        "stored": stored,
        "misplaced": misplaced,
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p95_s": round(_percentile(latencies, 95), 3) if latencies else None,
        "max_s": round(max(latencies), 3) if latencies else None,
        "wall_s": round(wall, 2),
        "sign_in_max_s": round(max(sign_ins), 2) if sign_ins else None,
        "throughput_per_s": round(len(latencies) / wall, 2),
        "cpu_count": os.cpu_count(),
        "failures": failures[:20],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    ok = not failures and stored == total and misplaced == 0
    print("OK: all records stored under the right doctor" if ok else "FAILED: see failures above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
