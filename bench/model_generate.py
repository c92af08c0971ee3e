"""3D-R1 model generation cost: the tiny model on the CPU, and (where CUDA exists) the 7B-shaped model in bf16.

CPU part (always): one query through the tiny embedded model — processor (point sampling, view resizing,
tokenising), prefill and greedy decode of a fixed number of tokens — beside the baseline measured in the
same run: the bare text backbone (`language_model.generate`) decoding from a text-only prompt of the same
length, so the ratio is what the encoders and splicing cost.

GPU part (only with CUDA; skipped with a reason otherwise): R3D with a Qwen2.5-7B-shaped backbone, a
SigLIP-L-shaped view tower and random bf16 weights; a realistic prompt (256 scene tokens + 6 views x
(16 view + 1 depth) tokens + system prompt + question); prefill time (encoders + decoder), decode tokens/s of
`R3DForConditionalGeneration.generate`, beside plain `generate` of the bare backbone, the static-cache
+ compile variant, and the memory-bandwidth limit (weight bytes / measured device copy bandwidth).

    .venv/bin/python bench/model_generate.py [--quick] [--new-tokens 64] [--repeats 3] [--gpu-only]

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import statistics
import sys
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')  # shared 2-core machine: 2 threads thrash
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from r3d_ros.model import R3DForConditionalGeneration, R3DProcessor  # noqa: E402
from r3d_ros.model.presets import build_tiny_model_and_processor, paper_config, tiny_tokenizer  # noqa: E402

QUESTION = 'Where is the red chair relative to the table, and how far apart are they?'


def scene(n_points: int, n_views: int, image_size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([0, 0, 0], [6, 5, 2.6], (n_points, 3)).astype(np.float32)
    cloud = np.concatenate([xyz, rng.uniform(0, 1, (n_points, 3)).astype(np.float32)], axis=1)
    views = [rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8) for _ in range(n_views)]
    depths = [rng.uniform(0.3, 8.0, (image_size, image_size)).astype(np.float32) for _ in range(n_views)]
    return cloud, views, depths


def sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls after one warm-up call, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def measure(model, processor, cloud, views, depths, new_tokens: int, repeats: int, device: str) -> dict:
    """Preprocess / prefill / decode figures for R3D, and the bare backbone on a same-length text prompt."""
    def preprocess():
        batch = processor(questions=[QUESTION], point_clouds=[cloud], views=[views], depths=[depths])
        return {k: v.to(device) for k, v in batch.items()}

    t_pre, batch = timed(preprocess, device, repeats)
    if 'view_pixel_values' in batch:
        batch['view_pixel_values'] = batch['view_pixel_values'].to(model.dtype)
        batch['view_depths'] = batch['view_depths'].to(model.dtype)
    prompt_len = batch['input_ids'].shape[1]
    gen_kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    one_kw = dict(max_new_tokens=1, do_sample=False)
    # decode rate = (N - 1) / (time for N tokens - time for 1 token): the prefill cancels out
    with torch.inference_mode():
        t_embed, _ = timed(lambda: model.embed(batch['input_ids'], batch['point_clouds'],
                                               batch.get('view_pixel_values'), batch.get('view_depths'),
                                               batch.get('view_mask')), device, repeats)
        t_prefill, _ = timed(lambda: model(**batch, use_cache=True), device, repeats)
        t_first, _ = timed(lambda: model.generate(**batch, **one_kw), device, repeats)
        t_gen, out = timed(lambda: model.generate(**batch, **gen_kw), device, repeats)
        n_new = out.shape[1] - prompt_len
        # baseline: the text backbone alone, same prompt length, plain generate
        text_ids = torch.randint(10, processor.tokenizer.vocab_size, (1, prompt_len), device=device)
        lm = model.language_model
        lm_kw = dict(attention_mask=torch.ones_like(text_ids), pad_token_id=0)
        t_lm_prefill, _ = timed(lambda: lm(input_ids=text_ids, use_cache=True), device, repeats)
        t_lm_first, _ = timed(lambda: lm.generate(input_ids=text_ids, **lm_kw, **one_kw), device, repeats)
        t_lm_gen, lm_out = timed(lambda: lm.generate(input_ids=text_ids, **lm_kw, **gen_kw), device, repeats)
    lm_new = lm_out.shape[1] - prompt_len
    decode_tok_s = (n_new - 1) / max(t_gen - t_first, 1e-9)
    lm_decode_tok_s = (lm_new - 1) / max(t_lm_gen - t_lm_first, 1e-9)
    return {
        'prompt_tokens': prompt_len, 'new_tokens': int(n_new),
        'preprocess_ms': t_pre * 1e3, 'encoders_and_embed_ms': t_embed * 1e3, 'prefill_ms': t_prefill * 1e3,
        'time_to_first_token_ms': t_first * 1e3, 'generate_ms': t_gen * 1e3,
        'latency_per_query_ms': (t_pre + t_gen) * 1e3, 'decode_tok_s': decode_tok_s,
        'baseline_lm_prefill_ms': t_lm_prefill * 1e3, 'baseline_lm_time_to_first_token_ms': t_lm_first * 1e3,
        'baseline_lm_generate_ms': t_lm_gen * 1e3, 'baseline_lm_decode_tok_s': lm_decode_tok_s,
        'ratio_generate_vs_baseline': t_gen / max(t_lm_gen, 1e-9),
        'ratio_decode_tok_s_vs_baseline': decode_tok_s / max(lm_decode_tok_s, 1e-9),
    }


def cpu_part(args) -> dict:
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    model, processor = build_tiny_model_and_processor(with_views=True, num_points=1024, seed=0)
    model.eval()
    cloud, views, depths = scene(args.points, args.views, 224)
    figures = measure(model, processor, cloud, views, depths, args.new_tokens, args.repeats, 'cpu')
    figures.update(device='cpu', threads=torch.get_num_threads(), input_points=args.points, views=args.views,
                   parameters=sum(p.numel() for p in model.parameters()))
    return figures


def copy_bandwidth_bytes_s(device: str, gib: float = 1.0) -> float:
    """Device memory bandwidth from a large copy (bytes read + written per second)."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t, _ = timed(lambda: dst.copy_(src), device, 10)
    return 2 * gib * 2**30 / t


def gpu_part(args, device: str = 'cuda', make_config=paper_config) -> dict:
    """The 7B-shaped figures (``device``/``make_config`` are only changed to dry-run this code small on a CPU)."""
    if device == 'cuda' and not torch.cuda.is_available():
        return {'skipped': 'no CUDA device on this machine'}
    torch.manual_seed(0)
    tok = tiny_tokenizer()  # ids < 152064, placeholders included; the figures do not depend on the vocabulary
    cfg = make_config(tok)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = R3DForConditionalGeneration(cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    model.point_encoder.float()  # as from_pretrained(dtype=bfloat16) leaves it (_keep_in_fp32_modules_strict)
    processor = R3DProcessor(tok, num_points=cfg.num_points, num_scene_tokens=cfg.num_scene_tokens,
                             num_view_tokens=cfg.num_view_tokens, image_size=cfg.vision_config.image_size)
    cloud, views, depths = scene(max(args.points, cfg.num_points), 6, 480)  # renders are resized
    figures = measure(model, processor, cloud, views, depths, args.gpu_new_tokens, args.repeats, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
    bandwidth = copy_bandwidth_bytes_s(device)
    figures.update(device=torch.cuda.get_device_name() if device == 'cuda' else device, dtype='bfloat16',
                   weight_gb=weight_bytes / 1e9, copy_bandwidth_tb_s=bandwidth / 1e12,
                   decode_limit_tok_s=bandwidth / weight_bytes,
                   share_of_limit=figures['decode_tok_s'] / (bandwidth / weight_bytes),
                   peak_memory_gb=torch.cuda.max_memory_allocated() / 1e9 if device == 'cuda' else None)
    # static KV cache (+ the automatic torch.compile of transformers' generate) on the same R3D prompt
    try:
        batch = processor(questions=[QUESTION], point_clouds=[cloud], views=[views], depths=[depths])
        batch = {k: v.to(device) for k, v in batch.items()}
        batch['view_pixel_values'] = batch['view_pixel_values'].to(torch.bfloat16)
        batch['view_depths'] = batch['view_depths'].to(torch.bfloat16)
        n = args.gpu_new_tokens
        kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, cache_implementation='static')
        one = dict(kw, max_new_tokens=1, min_new_tokens=1)
        with torch.inference_mode():
            t_one, _ = timed(lambda: model.generate(**batch, **one), device, args.repeats)
            t_static, out = timed(lambda: model.generate(**batch, **kw), device, args.repeats)
        new = out.shape[1] - batch['input_ids'].shape[1]
        figures['static_cache_generate_ms'] = t_static * 1e3
        figures['static_cache_decode_tok_s'] = (new - 1) / max(t_static - t_one, 1e-9)
    except Exception as exc:  # noqa: BLE001 - report, do not hide the other figures
        figures['static_cache_error'] = f'{type(exc).__name__}: {exc}'[:300]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='short run: fewer tokens and repeats')
    parser.add_argument('--new-tokens', type=int, default=64, help='tokens decoded per query on the CPU')
    parser.add_argument('--gpu-new-tokens', type=int, default=128, help='tokens decoded per query on the GPU')
    parser.add_argument('--points', type=int, default=40_000, help='points in the input scene cloud')
    parser.add_argument('--views', type=int, default=6, help='rendered views per query')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--gpu-only', action='store_true')
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.gpu_new_tokens, args.repeats = 16, 32, 1
    result = {'bench': 'model_generate', 'command': ' '.join(['bench/model_generate.py', *sys.argv[1:]])}
    if not args.gpu_only:
        result['cpu_tiny'] = cpu_part(args)
        print('cpu:', json.dumps(result['cpu_tiny']), flush=True)
    result['gpu_7b_shaped'] = gpu_part(args)
    print(json.dumps(result))


if __name__ == '__main__':
    main()
