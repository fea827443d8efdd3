"""Torch-profiler view of `generate` (LLaVA-NeXT-7B shape, batch 8, 16 new tokens) for vanilla, PyramidDrop
and FastV, with the staged engine's own labels (pdrop::...); output in results/bench/profile-decode-gpu.txt
(results/bench/README.md)."""

import torch
from torch.profiler import ProfilerActivity, profile

from pdrop_eval.compat import ensure_torchvision_importable

ensure_torchvision_importable()
from pdrop_eval.bench import build_model, prompt_ids  # noqa: E402
from pdrop_eval.bench_settings import BenchSettings  # noqa: E402
from pdrop_eval.engine.apply import apply_drop  # noqa: E402
from pdrop_eval.engine.config import DropConfig  # noqa: E402


s = BenchSettings(hidden_size=4096, intermediate_size=11008, num_heads=32, num_kv_heads=32, image_tokens=2880, text_tokens=60,
                  batch_size=8, dtype="bfloat16", device="cuda")
model = build_model(s)
ids = prompt_ids(s, model.config.image_token_id)
kwargs = {"attention_mask": torch.ones_like(ids), "max_new_tokens": 16, "min_new_tokens": 16, "do_sample": False, "pad_token_id": 0}
for name, cfg in [("vanilla", None), ("pdrop", DropConfig.pyramid(ratio=0.5)), ("fastv", DropConfig.fastv(k=2, r=0.5))]:
    handle = apply_drop(model, cfg) if cfg else None
    with torch.inference_mode():
        model.generate(input_ids=ids, **kwargs)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model.generate(input_ids=ids, **kwargs)
            torch.cuda.synchronize()
    averages = prof.key_averages()
    print(f"##### {name}")
    for event in averages:
        if event.key.startswith("pdrop::") or event.key in ("aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention",
                                                             "aten::_scaled_dot_product_cudnn_attention", "aten::_efficient_attention_forward",
                                                             "aten::_flash_attention_forward", "aten::_cudnn_attention_forward", "aten::bmm", "aten::mm", "aten::index_select", "aten::gather"):
            print(f"  {event.key:55s} calls {event.count:6d} cpu_total {event.cpu_time_total/1e3:9.1f} ms  cuda_total {event.device_time_total/1e3:9.1f} ms  self_cuda {event.self_device_time_total/1e3:8.1f} ms")
    print(averages.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=70))
    if handle:
        handle.remove()
