"""A small dataset in the ``r3d-make-data`` layout, for the training tests and smoke runs.

Prefers the project's generator (``r3d_ros.scenes.qa`` + ``r3d_ros.scenes.dataset``) when it is installed;
otherwise writes a few grounding / counting / attribute records per scene itself, with a true step-by-step
chain of thought derived from the scene's ground truth, so the training code can be tested on its own.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from r3d_ros.output_format import format_completion
from r3d_ros.scenes.types import QARecord


def _records_for_scene(scene) -> list[QARecord]:
    out = []
    labels = Counter(o.label for o in scene.objects)
    for obj in scene.objects[:3]:
        name = obj.label.replace('_', ' ')
        think = (f'First, I look for the {obj.color_name} {name} in the scene. Next, I find its points and their '
                 f'extent. Then, I measure the box around them. Finally, the target is {obj.ref}.')
        answer = f'The {obj.color_name} {name} is here.'
        box = obj.box
        out.append(QARecord(scene.scene_id, f'Where is the {obj.color_name} {name}?',
                            format_completion(think, answer, [box]), answer, 'grounding', think,
                            boxes=[{'ref': box.ref, 'center': list(box.center), 'size': list(box.size)}]))
    label, n = labels.most_common(1)[0]
    name = label.replace('_', ' ')
    think = (f'First, I list the objects in the room. Next, I keep those that are a {name}. Then, I count them. '
             f'Finally, there are {n} of the {name}.')
    answer = f'There {"is" if n == 1 else "are"} {n}.'
    out.append(QARecord(scene.scene_id, f'How many {name}s are in the room?', format_completion(think, answer),
                        answer, 'counting', think))
    obj = scene.objects[0]
    name = obj.label.replace('_', ' ')
    think = (f'First, I find the {name}. Next, I look at the colour of its points. Then, I compare it with known '
             f'colours. Finally, the {name} is {obj.color_name}.')
    answer = f'It is {obj.color_name}.'
    out.append(QARecord(scene.scene_id, f'What color is the {name}?', format_completion(think, answer), answer,
                        'attribute', think))
    return out


def write_toy_dataset(out_dir: str | Path, num_scenes: int = 6, seed: int = 0, point_density: float = 20.0,
                      use_project_generator: bool = True) -> Path:
    """Write ``out_dir/{train,val,test}.jsonl`` + ``out_dir/scenes/*.npz`` (split by scene: 4/1/1 of 6)."""
    out = Path(out_dir)
    if use_project_generator:
        try:
            from r3d_ros.scenes.cli import main as make_data
        except ImportError:
            make_data = None
        if make_data is not None:
            make_data(['--scenes', str(num_scenes), '--out', str(out), '--seed', str(seed)])
            return out
    from r3d_ros.scenes.synthetic import generate_scene

    (out / 'scenes').mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[QARecord]] = {'train': [], 'val': [], 'test': []}
    for i in range(num_scenes):
        scene = generate_scene(seed + i, point_density=point_density, num_objects=(5, 12))
        np.savez_compressed(out / 'scenes' / f'{scene.scene_id}.npz', points=scene.points, colors=scene.colors,
                            instance=scene.instance, objects=np.array(scene.objects_json()))
        # by scene, so test questions are about rooms never seen in training: last sixth test, one sixth val
        n_test = max(1, num_scenes // 6)
        split = 'test' if i >= num_scenes - n_test else ('val' if i >= num_scenes - 2 * n_test else 'train')
        splits[split] += _records_for_scene(scene)
    for split, recs in splits.items():
        (out / f'{split}.jsonl').write_text(''.join(r.to_json() + '\n' for r in recs), encoding='utf-8')
    return out
