"""Issue 20 probe: does torch.compile or bf16 autocast speed up EfficientNet-Lite0 training on this CPU?

Usage: `.venv/bin/python scripts/train_compile_probe.py` (nice it on a shared machine). Two rounds of: eager and
torch.compile (inductor) models, each in fp32 and bf16 autocast, two untimed then three timed AdamW steps on a random
batch of 32 at 224 px, 2 threads; prints wall-clock images/s, images per CPU-second and the first two steps' time
(which includes compilation).
"""

import time

import timm
import torch

torch.set_num_threads(2)
torch.manual_seed(0)
x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 2, (32,))


def run(tag: str, model: torch.nn.Module, precision: str, steps: int = 3) -> None:
    """Time `steps` training steps of `model` after two untimed ones."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    step()
    first = time.perf_counter() - start
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    print(f"{tag} {precision}: {steps * 32 / (time.perf_counter() - wall):.1f} img/s, "
          f"{steps * 32 / (time.process_time() - cpu):.1f} img/CPU-s (first 2 steps {first:.0f} s)", flush=True)


def fresh() -> torch.nn.Module:
    """A new EfficientNet-Lite0 in training mode, channels_last."""
    return timm.create_model("efficientnet_lite0", num_classes=2).train().to(memory_format=torch.channels_last)


if __name__ == "__main__":
    for _ in range(2):
        for precision in ("fp32", "bf16"):
            run("eager", fresh(), precision)
            run("compiled", torch.compile(fresh()), precision)
