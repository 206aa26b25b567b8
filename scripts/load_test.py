"""Load benchmark: N signed-in doctors submit M predictions each, concurrently, to a freshly started `app.py`.

The app runs as its own process (`python app.py`, as `make run` starts it) on a temporary data folder and
SQLite database (or --database-url). Afterwards the database is checked: every doctor must own exactly the
records it submitted (none lost, none under another doctor). Prints p50/p95 latency, throughput, and the CPU time
the app and the load generator used while the predictions ran (they share the machine's cores).

The doctors are asyncio tasks speaking Gradio's HTTP API with httpx, in one thread (`--client http`, the
default): sign in, upload, queue the `diagnose` event with the doctor's session, read the result stream, as a
browser does. `--client gradio_client` uses one `gradio_client.Client` per doctor instead, which costs the shared
cores about as much CPU as the app itself.

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
from typing import Any

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


def _cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system, all threads) of a process, or of this one; None where /proc is missing."""
    if pid is None:
        usage = os.times()
        return usage.user + usage.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


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


def _run_gradio_client(
    url: str, accounts: dict[str, str], images: list[Path], model: str, per_client: int, app_pid: int
) -> dict[str, Any]:
    """Each doctor is a `gradio_client.Client` in its own thread (heavier on the load generator's CPU)."""
    from gradio_client import Client, handle_file

    start_line = threading.Barrier(len(accounts) + 1, timeout=900)
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
        for i in range(per_client):
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

    with ThreadPoolExecutor(max_workers=len(accounts)) as pool:
        futures = [pool.submit(doctor_session, name) for name in accounts]
        start_line.wait()
        began = time.perf_counter()
        app_cpu, own_cpu = _cpu_seconds(app_pid), _cpu_seconds()
        for future in futures:
            future.result()
        wall = time.perf_counter() - began
        app_end, own_end = _cpu_seconds(app_pid), _cpu_seconds()
        # Where the cores went while the predictions ran: the app, and this load generator (same machine).
        app_cpu = None if app_cpu is None or app_end is None else app_end - app_cpu
        own_cpu = own_end - own_cpu
    return {"latencies": latencies, "sign_ins": sign_ins, "failures": failures, "wall": wall, "app_cpu": app_cpu,
            "own_cpu": own_cpu}


def _run_http(
    url: str, accounts: dict[str, str], images: list[Path], model: str, per_client: int, app_pid: int
) -> dict[str, Any]:
    """Each doctor is an asyncio task speaking Gradio's HTTP API with httpx, all in one thread.

    The same requests a browser makes for one Diagnose click (sign in once, upload the file, queue the
    `diagnose` event, read its result stream), at a fraction of gradio_client's CPU, so that more of the shared
    cores are left to the app under test.
    """
    import asyncio

    import httpx

    payloads = {image: image.read_bytes() for image in images}
    sessions = {name: secrets.token_hex(8) for name in accounts}
    latencies: list[float] = []
    sign_ins: list[float] = []
    failures: list[str] = []

    async def diagnose_once(client: httpx.AsyncClient, name: str, i: int) -> None:
        image = images[i % len(images)]
        uploaded = await client.post("gradio_api/upload", files={"files": (image.name, payloads[image])})
        uploaded.raise_for_status()
        file_data = {"path": uploaded.json()[0], "orig_name": image.name, "meta": {"_type": "gradio.FileData"}}
        # every input of the event, the patient group (Adult / Child) last: the raw HTTP API has no defaults
        data = [file_data, f"{name}/patient-{i}", "2024-01-15", model, "gradcam", 0.4, "Adult"]
        # One session per doctor, as one browser tab has: Gradio sets up a session's state once.
        queued = await client.post("gradio_api/call/diagnose", json={"data": data, "session_hash": sessions[name]})
        queued.raise_for_status()
        event = None
        async with client.stream("GET", f"gradio_api/call/diagnose/{queued.json()['event_id']}") as stream:
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    if event == "error":
                        raise RuntimeError(f"the app answered with an error: {line[5:].strip()}")
                    return
        raise RuntimeError(f"the result stream ended without a result (last event: {event})")

    async def doctor_session(name: str, started: asyncio.Event, signed_in: list[str]) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            began = time.perf_counter()
            try:
                response = await client.post("login", data={"username": name, "password": accounts[name]})
                response.raise_for_status()
                sign_ins.append(time.perf_counter() - began)
                signed_in.append(name)
            except httpx.HTTPError as exc:
                failures.append(f"{name} could not sign in: {exc!r}")
                return
            await started.wait()
            for i in range(per_client):
                began = time.perf_counter()
                try:
                    await diagnose_once(client, name, i)
                except (httpx.HTTPError, RuntimeError, ValueError, KeyError) as exc:
                    failures.append(f"{name} #{i}: {exc!r}")
                    continue
                latencies.append(time.perf_counter() - began)

    async def everyone() -> tuple[float, float | None, float]:
        started = asyncio.Event()
        signed_in: list[str] = []
        tasks = [asyncio.create_task(doctor_session(name, started, signed_in)) for name in accounts]
        # 20 simultaneous Argon2 sign-ins take several seconds on a small machine: start once all are in.
        while len(signed_in) + sum(f.endswith("could not sign in") for f in failures) < len(accounts):
            if all(task.done() for task in tasks):
                break
            await asyncio.sleep(0.05)
        began = time.perf_counter()
        app_cpu, own_cpu = _cpu_seconds(app_pid), _cpu_seconds()
        started.set()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - began
        app_end, own_end = _cpu_seconds(app_pid), _cpu_seconds()
        app_used = None if app_cpu is None or app_end is None else app_end - app_cpu
        return wall, app_used, own_end - own_cpu

    wall, app_cpu, own_cpu = asyncio.run(everyone())
    return {"latencies": latencies, "sign_ins": sign_ins, "failures": failures, "wall": wall, "app_cpu": app_cpu,
            "own_cpu": own_cpu}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 when every record was stored under the right doctor."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20, help="concurrent signed-in doctors (default 20)")
    parser.add_argument("--per-client", type=int, default=10, help="predictions per doctor (default 10)")
    parser.add_argument("--model", default=None, help="model name (default: XRAY_DEFAULT_MODEL, or a tiny random one)")
    parser.add_argument("--database-url", default=None, help="database for the app (default: SQLite in a temp dir)")
    parser.add_argument(
        "--client", choices=("http", "gradio_client"), default="http",
        help="how the doctors talk to the app: asyncio + httpx in one thread (default; light on the shared CPU) or "
             "one gradio_client.Client per doctor, in threads (what earlier figures used)",
    )  # fmt: skip
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
        run = _run_gradio_client if args.client == "gradio_client" else _run_http
        outcome = run(url, accounts, images, model, args.per_client, server.pid)
        latencies, sign_ins, failures = outcome["latencies"], outcome["sign_ins"], outcome["failures"]
        wall, app_cpu, own_cpu = outcome["wall"], outcome["app_cpu"], outcome["own_cpu"]
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
        "client": args.client,
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
        "app_cpu_s": round(app_cpu, 2) if app_cpu is not None else None,
        "load_generator_cpu_s": round(own_cpu, 2),
        "app_cpu_ms_per_prediction": round(1000 * app_cpu / len(latencies), 1) if app_cpu and latencies else None,
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
