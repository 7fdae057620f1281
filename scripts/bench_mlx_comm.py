"""MLX ring-backend all_sum timings, the peer figure for `huddle bench comm`.

Run through scripts/bench-mlx-comm.sh, which starts the ranks directly with
MLX_RANK and MLX_HOSTFILE (mlx.launch spins a core per rank while waiting,
which would distort the numbers on a 2-core machine).
Prints one line per size in the same columns as `huddle bench comm`.
"""
import os
import sys
import time

import mlx.core as mx


def main():
    group = mx.distributed.init(backend="ring", strict=True)
    n, rank = group.size(), group.rank()
    sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "4,4096,65536,1048576,16777216,67108864").split(",")]
    for nbytes in sizes:
        count = max(1, nbytes // 4)
        x = mx.ones((count,), dtype=mx.float32)
        iters = 200 if nbytes <= 65536 else (50 if nbytes <= 4 << 20 else 10)
        for _ in range(5):
            mx.eval(mx.distributed.all_sum(x, group=group))
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            mx.eval(mx.distributed.all_sum(x, group=group))
            times.append(time.perf_counter() - t0)
        times.sort()
        p50 = times[len(times) // 2]
        algbw = count * 4 / p50 / 1e9
        busbw = algbw * 2 * (n - 1) / n
        if rank == 0:
            print(f"mlx all_sum {n} ranks {count * 4:>10} B  p50 {p50 * 1e6:10.1f} us  algbw {algbw:6.3f} GB/s  busbw {busbw:6.3f} GB/s", flush=True)


if __name__ == "__main__":
    main()
