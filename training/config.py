"""YAML training configs: loading, dotted overrides and the JSON-lines log callback shared by both stages.

A config has sections ``model`` (see :func:`training.modeling.load_model_and_processor`), ``data``
(``dir``, ``max_train``, ``max_eval``, ``tasks``, ``max_points``), ``train`` (fields of trl's
``SFTConfig`` / ``GRPOConfig``, passed through unchanged) and, for GRPO, ``rewards`` (``names``,
``weights``, ``encoder``). Paper defaults live in ``training/configs/{sft,grpo}.yaml``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
import time

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'


def config_path(name_or_path: str) -> Path:
    """A path, or the name of a bundled config (``sft``, ``tiny_grpo_pointer``, ...)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    bundled = CONFIG_DIR / (name_or_path if name_or_path.endswith('.yaml') else f'{name_or_path}.yaml')
    if bundled.exists():
        return bundled
    raise FileNotFoundError(f'no config {name_or_path!r} (bundled ones: '
                            f'{sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))})')


def load_config(name_or_path: str, overrides: list[str] | None = None) -> dict:
    """Read a YAML config (``extends: <name>`` merges a base config first) and apply ``a.b=value`` overrides
    (values parsed as YAML, so ``train.max_steps=5`` gives an int)."""
    path = config_path(name_or_path)
    cfg = yaml.safe_load(path.read_text()) or {}
    base = cfg.pop('extends', None)
    if base:
        cfg = merge(load_config(base), cfg)
    for item in overrides or []:
        key, sep, value = item.partition('=')
        if not sep:
            raise ValueError(f'override {item!r} is not key=value')
        node = cfg
        *parents, leaf = key.strip().split('.')
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _scalar(yaml.safe_load(value))
    return cfg


def _scalar(value):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; a learning rate given that way is meant as a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def make_log_callback(path: str | Path):
    """A transformers callback appending every log dict (loss, lr, rewards, ...) as one JSON line."""
    from transformers import TrainerCallback

    class JsonlLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with open(path, 'a', encoding='utf-8') as f:
                    f.write(json.dumps({'step': state.global_step, 'time': time.time(),
                                        'world_size': args.world_size, **logs}) + '\n')

    return JsonlLogger()


def make_processor_saver(processor):
    """A callback writing the R3D processor (tokenizer + r3d_processor.json) into every ``checkpoint-N``, so
    any checkpoint loads like a final model (evaluate, the reasoner, GRPO's start point)."""
    from transformers import TrainerCallback

    class ProcessorSaver(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                processor.save_pretrained(Path(args.output_dir) / f'checkpoint-{state.global_step}')

    return ProcessorSaver()


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` directory under ``output_dir`` (what ``--resume`` continues from)."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(output_dir)
    return get_last_checkpoint(str(out)) if out.is_dir() else None
