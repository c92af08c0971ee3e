"""Query latency on the CPU: the demo's five questions through ``ScenePipeline.answer`` on the demo's map.

The map is the one the demo's robot holds (sim_sensor's room, scene_seed 0, fused from one lap of its orbit,
``r3d_ros.scenes.sensor_sim.lap_map``). The model (default: the embedded one) answers every question
``--repeats`` times with the selected views (``--num-views``, as the reasoner runs) and, in the same run, without
any (the baseline: no selection, no view tokens), so the ratio is what views cost; per stage the medians of
``timings`` (view selection, view encoding, generation). Issue 22 asks p50 <= 1.5 s on the 2-core dev VM.

    .venv/bin/python bench/query_latency.py [--model DIR] [--repeats 3] [--threads 2]

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import statistics
import sys

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault('HF_HUB_OFFLINE', '1')


def demo_map():
    """(points, colors) of one lap of sim_sensor's orbit around the demo's room (config/sim_sensor.yaml)."""
    from r3d_ros.scenes.sensor_sim import lap_map
    from r3d_ros.scenes.synthetic import generate_scene

    scene = generate_scene(0, num_objects=(5, 30), point_density=400.0)
    xyz, rgb, _ = lap_map(scene, radius_fraction=0.3)
    return xyz, rgb


def measure(pipe, points, colors, questions, repeats: int) -> dict:
    """Medians over every (question, repeat) of the total and per-stage seconds, and the statuses seen."""
    runs = [pipe.answer(points, colors, q) for _ in range(repeats) for q in questions]
    stages = ('total_s', 'view_selection_s', 'view_encoding_s', 'generate_s', 'grounding_s')
    out = {f'p50_{s}': round(statistics.median(r.timings.get(s, 0.0) for r in runs), 4) for s in stages}
    out['max_total_s'] = round(max(r.timings['total_s'] for r in runs), 4)
    out['statuses'] = sorted({r.status for r in runs})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', default=None, help='R3D checkpoint (default: the embedded one)')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--threads', type=int, default=2, help='torch threads (the dev VM has two cores)')
    ap.add_argument('--num-views', type=int, default=6)
    args = ap.parse_args(argv)
    import torch

    from r3d_ros.nodes.demo import DEFAULT_QUESTIONS
    from r3d_ros.pipeline import ScenePipeline

    torch.set_num_threads(args.threads)
    points, colors = demo_map()
    with_views = ScenePipeline.from_pretrained(args.model, device='cpu', num_views=args.num_views,
                                               max_new_tokens=512)
    without = ScenePipeline(with_views.model, with_views.processor, None, device='cpu', num_views=0,
                            max_new_tokens=512)
    for pipe in (with_views, without):   # warm-up: MiniLM, the aligner, first-call allocations
        pipe.answer(points, colors, DEFAULT_QUESTIONS[0])
    res = {'model': str(args.model or 'embedded'), 'view_tower': with_views.uses_views, 'threads': args.threads,
           'map_points': int(len(points)), 'questions': len(DEFAULT_QUESTIONS), 'repeats': args.repeats,
           'with_views': measure(with_views, points, colors, DEFAULT_QUESTIONS, args.repeats),
           'without_views': measure(without, points, colors, DEFAULT_QUESTIONS, args.repeats)}
    res['ratio_p50_total'] = round(res['with_views']['p50_total_s'] / res['without_views']['p50_total_s'], 3)
    print(json.dumps(res))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
