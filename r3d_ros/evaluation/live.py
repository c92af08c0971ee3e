"""Live evaluation: the robot's graph (scene_map + reasoner, ``use_sim_time``) on a replayed bag.

No rclpy here: the graph is started by :class:`r3d_ros.nodes.bringup.Bringup` (graph ``r3d`` of
``config/bringup.yaml``) and ``r3d-play`` plays the bag, asks the annotated questions at their bag times and
writes every answer to a JSON-lines file, which this module follows for the progress bar.
"""

from __future__ import annotations

import json
from pathlib import Path
import time

from r3d_ros.process import ManagedProcess, find_executable


def _read_answers(path: Path) -> dict[str, dict]:
    out = {}
    if path.exists():
        for line in path.read_text(encoding='utf-8').splitlines():
            try:
                a = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            out[str(a.get('id'))] = a
    return out


def evaluate_live(bag: str | Path, annotations: str | Path, out_dir: str | Path, n_questions: int,
                  rate: float = 1.0, model_path: str | None = None, device: str = 'auto',
                  max_new_tokens: int | None = None, num_views: int | None = None, question_delay: float = 2.0,
                  answer_timeout: float = 600.0, domain_id: int | None = None, progress: bool = True,
                  extra_params: dict | None = None) -> dict[str, dict]:
    """Play ``bag`` through the graph and return {question id: answer dict (with ``latency_s``)}."""
    from tqdm import tqdm

    from r3d_ros.nodes.bringup import Bringup

    out_dir = Path(out_dir)
    logs = out_dir / 'logs'
    logs.mkdir(parents=True, exist_ok=True)
    answers_path = out_dir / 'answers_live.jsonl'
    answers_path.unlink(missing_ok=True)
    reasoner = {'use_sim_time': 'true', 'device': device}
    if model_path:
        reasoner['model_path'] = model_path
    if max_new_tokens is not None:
        reasoner['max_new_tokens'] = str(max_new_tokens)
    if num_views is not None:
        reasoner['num_views'] = str(num_views)
    reasoner['queue_size'] = str(max(4, n_questions + 1))   # every question is queued, none answered busy
    overrides = {'scene_map': {'use_sim_time': 'true'}, 'reasoner': reasoner}
    for node, params in (extra_params or {}).items():
        overrides.setdefault(node, {}).update(params)
    with Bringup('r3d', domain_id=domain_id, overrides=overrides, log_dir=str(logs)) as graph:
        argv = [find_executable('r3d-play'), str(bag), '--rate', str(rate), '--questions', str(annotations),
                '--answers-out', str(answers_path), '--question-delay', str(question_delay),
                '--answer-timeout', str(answer_timeout), '--wait-for', 'points', 'query',
                '--wait-active', 'scene_map', 'reasoner', '--delay', '1.0']
        player = ManagedProcess(argv, env=graph.env, name='r3d-play', log_dir=str(logs))
        try:
            bar = tqdm(total=n_questions, desc='answers (live)', unit='q', disable=not progress)
            seen = 0
            while player.alive():
                dead = graph.dead()
                if dead:
                    raise RuntimeError(f'{dead} exited during evaluation; logs in {logs}:\n'
                                       + graph.processes[dead[0]].output()[-3000:])
                n = len(_read_answers(answers_path))
                bar.update(n - seen)
                seen = n
                time.sleep(0.2)
            bar.update(len(_read_answers(answers_path)) - seen)
            bar.close()
            if player.proc.returncode not in (0, 4):
                raise RuntimeError(f'r3d-play exited with {player.proc.returncode}:\n{player.output()[-3000:]}')
        finally:
            player.stop()
    return _read_answers(answers_path)
