"""Torch-profiler view of one prefill (7B shapes, batch 1, N=576 and 2880) for vanilla, PyramidDrop and FastV:
wall, host and GPU-kernel time; output in results/bench/profile-gpu.txt (results/bench/README.md)."""

import time

import torch
from torch.profiler import ProfilerActivity, profile

from pdrop_eval.compat import ensure_torchvision_importable

ensure_torchvision_importable()
from pdrop_eval.bench import build_model, prompt_ids  # noqa: E402
from pdrop_eval.bench_settings import BenchSettings  # noqa: E402
from pdrop_eval.engine.apply import apply_drop  # noqa: E402
from pdrop_eval.engine.config import DropConfig  # noqa: E402

for n, b in [(576, 1), (2880, 1)]:
    s = BenchSettings(hidden_size=4096, intermediate_size=11008, num_heads=32, num_kv_heads=32, image_tokens=n, text_tokens=60,
                      batch_size=b, dtype="bfloat16", device="cuda")
    model = build_model(s)
    ids = prompt_ids(s, model.config.image_token_id)
    for name, cfg in [("vanilla", None), ("pdrop", DropConfig.pyramid(ratio=0.5)), ("fastv", DropConfig.fastv(k=2, r=0.5))]:
        handle = apply_drop(model, cfg) if cfg else None
        with torch.inference_mode():
            for _ in range(3):
                model(input_ids=ids, use_cache=True)
            torch.cuda.synchronize()
            walls, launches = [], []
            for _ in range(5):
                t = time.perf_counter()
                model(input_ids=ids, use_cache=True)
                launches.append(time.perf_counter() - t)
                torch.cuda.synchronize()
                walls.append(time.perf_counter() - t)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                model(input_ids=ids, use_cache=True)
                torch.cuda.synchronize()
        averages = prof.key_averages()
        kernel_ms = sum(e.self_device_time_total for e in averages) / 1e3
        print(f"##### N={n} B={b} {name}: wall {sorted(walls)[2]*1e3:.1f} ms, python returned after {sorted(launches)[2]*1e3:.1f} ms, "
              f"GPU kernel time {kernel_ms:.1f} ms (profiled run)")
        print(averages.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))
        print(averages.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
        if handle:
            handle.remove()
    del model
    torch.cuda.empty_cache()
