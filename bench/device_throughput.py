"""Training and scoring throughput of one open_clip model on whatever device is here.

Random uint8 images and random tokens (nothing read from disk, no weights downloaded: the
model starts from random weights) through the steps the pipeline repeats:

- training: host batch (pinned memory on CUDA) -> non-blocking copy -> normalise -> forward
  under bf16 autocast (CUDA) with the image tower in channels_last -> open_clip.ClipLoss ->
  backward -> AdamW step;
- scoring: the same batch through encode_image / encode_text(normalize=True) under
  torch.inference_mode (and bf16 autocast on CUDA).

Warm-up steps first, then timed steps, with torch.cuda.synchronize before reading the clock.
Defaults: ViT-B-32 at 224 px on CUDA, clipmem-demo at its own 32 px on the CPU.

    .venv/bin/python bench/device_throughput.py                          # device auto
    .venv/bin/python bench/device_throughput.py --model clipmem-demo --steps 3

Prints one JSON line and writes it to bench/results/device_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipmem.scoring.runtime import keep_freed_memory, prefer_passive_openmp  # noqa: E402

prefer_passive_openmp()  # before torch loads
keep_freed_memory()
import open_clip  # noqa: E402
import torch  # noqa: E402

from clipmem.scoring.errors import ClipmemError  # noqa: E402
from clipmem.scoring.models import context_length_of, create_model, image_size_of, resolve_config  # noqa: E402

# open_clip's (OpenAI's) normalisation, the one scoring/transform.py uses too
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
HOST_BATCHES = 2  # distinct host batches cycled through, so each step really copies


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
                "peak_memory_kind": "cuda max_memory_allocated"}
    return {"peak_memory_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            "peak_memory_kind": "process max resident set size"}


def host_batches(batch_size: int, image_size: int, context_length: int, vocab_size: int, pin: bool,
                 seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random uint8 images (B, 3, S, S) and token ids (B, L), in pinned memory when `pin`."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(HOST_BATCHES):
        images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, generator=gen)
        tokens = torch.randint(1, vocab_size - 1, (batch_size, context_length), generator=gen)
        tokens[:, -1] = vocab_size - 1  # an end-of-text token (the largest id) for argmax pooling
        if pin:
            images, tokens = images.pin_memory(), tokens.pin_memory()
        out.append((images, tokens))
    return out


def to_device(images: torch.Tensor, tokens: torch.Tensor, device: torch.device, mean: torch.Tensor,
              std: torch.Tensor, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    tokens = tokens.to(device, non_blocking=True)
    x = (images.float().div_(255.0) - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, tokens


def measure(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    model_name = args.model or ("ViT-B-32" if cuda else "clipmem-demo")
    cfg = resolve_config(model_name)
    if args.image_size or cuda:
        cfg["vision_cfg"]["image_size"] = args.image_size or 224
    image_size = image_size_of(cfg)
    context_length = context_length_of(cfg)
    vocab_size = int(cfg["text_cfg"].get("vocab_size", 49408))
    channels_last = cuda and not args.no_channels_last
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and not args.fp32 else nullcontext()

    torch.manual_seed(args.seed)
    model = create_model(cfg, args.seed).to(device)
    if channels_last:
        model.visual.to(memory_format=torch.channels_last)  # the 4-D weights: the patch embedding
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    loss_fn = open_clip.ClipLoss()
    batches = host_batches(args.batch_size, image_size, context_length, vocab_size, pin=cuda, seed=args.seed)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)

    def train_step(i: int) -> torch.Tensor:
        x, t = to_device(*batches[i % HOST_BATCHES], device, mean, std, channels_last)
        with autocast:
            image_features, text_features, logit_scale = model(x, t)[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss.detach()

    def score_step(i: int) -> torch.Tensor:
        x, t = to_device(*batches[i % HOST_BATCHES], device, mean, std, channels_last)
        with autocast:
            img = model.encode_image(x, normalize=True)
            txt = model.encode_text(t, normalize=True)
        return (img.float() * txt.float()).sum(-1)

    model.train()
    for i in range(args.warmup):
        train_step(i)
    sync(device)
    t0 = time.perf_counter()
    losses = [train_step(i) for i in range(args.steps)]
    sync(device)
    train_s = time.perf_counter() - t0
    final_loss = float(losses[-1]) if losses else float("nan")
    train_peak = peak_memory(device)

    model.eval()
    with torch.inference_mode():
        for i in range(args.warmup):
            score_step(i)
        sync(device)
        t0 = time.perf_counter()
        for i in range(args.steps):
            score_step(i)
        sync(device)
        score_s = time.perf_counter() - t0

    n = args.batch_size * args.steps
    return {
        "device": str(device),
        "device_name": device_name(device),
        "model": model_name,
        "image_size": image_size,
        "context_length": context_length,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "precision": "bf16 autocast" if cuda and not args.fp32 else "fp32",
        "channels_last": channels_last,
        "pinned_memory": cuda,
        "train_samples_per_s": round(n / train_s, 1),
        "score_samples_per_s": round(n / score_s, 1),
        "final_train_loss": round(final_loss, 4),
        "train_peak_memory_bytes": train_peak["peak_memory_bytes"],
        **peak_memory(device),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when present, else the CPU")
    parser.add_argument("--model", default=None,
                        help="open_clip architecture or clipmem config (default: ViT-B-32 on CUDA, clipmem-demo on CPU)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side in pixels (default: 224 on CUDA, the config's own on CPU)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each phase")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: min(5, steps))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--no-channels-last", action="store_true", help="keep the contiguous layout on CUDA")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "device_throughput.json")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is available")
    if args.batch_size < 2 or args.steps < 1:
        parser.error("--batch-size must be at least 2 (a contrastive loss needs negatives) and --steps at least 1")
    if args.warmup is None:
        args.warmup = min(5, args.steps)
    try:
        result = measure(args)
    except ClipmemError as exc:
        parser.error(str(exc))
    line = json.dumps(result)
    print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
