"""minGRU through Recurrent: the log-space scan (backend=sequence) vs step by step (backend=loop).

    python plugins/rtk-mingru/benchmarks/scan_vs_loop.py [--repeats 1]

Forward + backward of one layer, batch 8, input and hidden 64, float32, CPU (or CUDA
when there is one), at T = 256, 1024, 4096. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

from toolkit.layers import Recurrent


def fwd_bwd_seconds(layer: Recurrent, x: torch.Tensor, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        layer.zero_grad(set_to_none=True)
        xi = x.detach().requires_grad_()
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        y, (h,) = layer(xi)
        (y.sum() + h.sum()).backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    B, I, H = 8, 64, 64
    torch.manual_seed(0)
    scan = Recurrent("mingru", I, H, backend="sequence").to(device)
    loop = Recurrent("mingru", I, H, backend="loop").to(device)
    loop.load_state_dict(scan.state_dict())
    warm = torch.randn(B, 16, I, device=device)
    fwd_bwd_seconds(scan, warm, 1), fwd_bwd_seconds(loop, warm, 1)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"B={B} I={I} H={H}, forward+backward, best of {args.repeats}")
    print("| T | scan (sequence) | step by step (loop) | loop / scan |\n|---|---|---|---|")
    for T in args.lengths:
        x = torch.randn(B, T, I, device=device)
        s, l = fwd_bwd_seconds(scan, x, args.repeats), fwd_bwd_seconds(loop, x, args.repeats)
        print(f"| {T} | {s * 1000:.1f} ms | {l * 1000:.1f} ms | {l / s:.1f}x |")


if __name__ == "__main__":
    main()
