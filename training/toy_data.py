"""A small dataset in the ``r3d-make-data`` layout, for the training tests and smoke runs.

Prefers the project's generator (``r3d_ros.scenes.qa`` + ``r3d_ros.scenes.dataset``) when it is installed;
otherwise writes a few grounding / counting / attribute / planning records per scene itself, with a true step-by-step
chain of thought derived from the scene's ground truth, so the training code can be tested on its own.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from r3d_ros.output_format import PlanStep, format_completion
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
    if len(scene.objects) >= 2:
        item, goal = scene.objects[-1], scene.objects[0]
        iname, gname = item.label.replace('_', ' '), goal.label.replace('_', ' ')
        floor = lambda o: (float(o.center[0]), float(o.center[1]), 0.0)
        steps = [PlanStep('navigate_to', item.ref, floor(item)), PlanStep('pick', item.ref, tuple(item.box.center)),
                 PlanStep('navigate_to', goal.ref, floor(goal)), PlanStep('place', goal.ref, tuple(goal.box.center))]
        think = (f'First, I find the {iname} and the {gname}. Next, I go to the {iname} and pick it up. Then, I go '
                 f'to the {gname}. Finally, I place it at the {gname}, the target {goal.ref}.')
        answer = f'I will bring the {iname} to the {gname}.'
        out.append(QARecord(scene.scene_id, f'Bring the {item.color_name} {iname} to the {gname}.',
                            format_completion(think, answer, plan=steps), answer, 'planning', think,
                            plan=[{'action': st.action, 'target': st.target, 'position': list(st.position)}
                                  for st in steps]))
    return out


def write_toy_dataset(out_dir: str | Path, num_scenes: int = 6, seed: int = 0, point_density: float = 20.0,
                      use_project_generator: bool = True) -> Path:
    """Write ``out_dir/{train,val,test}.jsonl`` + ``out_dir/scenes/*.npz`` (split by scene: a tenth each for
    val and test)."""
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
        # by scene, so test questions are about rooms never seen in training
        n_test = max(1, num_scenes // 10)
        split = 'test' if i >= num_scenes - n_test else ('val' if i >= num_scenes - 2 * n_test else 'train')
        splits[split] += _records_for_scene(scene)
    for split, recs in splits.items():
        (out / f'{split}.jsonl').write_text(''.join(r.to_json() + '\n' for r in recs), encoding='utf-8')
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m training.toy_data --scenes N --out DIR [--seed S] [--point-density D]``"""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--scenes', type=int, default=400)
    p.add_argument('--out', required=True)
    p.add_argument('--seed', type=int, default=1000)
    p.add_argument('--point-density', type=float, default=20.0)
    p.add_argument('--project-generator', action='store_true',
                   help='use r3d-make-data (r3d_ros.scenes) when it is installed instead of the records here')
    a = p.parse_args(argv)
    print(write_toy_dataset(a.out, a.scenes, a.seed, a.point_density, use_project_generator=a.project_generator))


if __name__ == '__main__':
    main()
