"""Scene-30K-shaped data on disk: a scene store, JSON-lines splits, and the paper's CoT quality filter.

Layout of a data directory::

    DIR/scenes/<scene_id>.npz    points (N,3) float32, colors (N,3) uint8, instance (N,) int32,
                                 objects (0-d str: JSON with scene_id, room_size, objects)
    DIR/train.jsonl, val.jsonl, test.jsonl   one QARecord per line (split by scene, never by question)
    DIR/stats.json               what was generated and what the quality filter kept, per rule and task

Files are byte-identical for the same seed and arguments: the ``.npz`` archives are written with a fixed
zip timestamp (``numpy.savez`` stamps the current time), JSON with sorted keys, and no run times are stored.

Quality filter (the paper's rules for Scene-30K, thresholds configurable, paper values as defaults):
``format`` - the completion matches the think/answer grammar; ``think_words`` - ``<think>`` has at least 30
words; ``answer_words`` - the answer section has at least 20 words (counted on the answer text with box and
plan markup removed; our generator writes a full-sentence answer with its evidence, so every task meets the
paper's threshold, and the short answer lives in ``QARecord.short_answer`` for exact-match scoring);
``steps`` - at least 3 explicit steps ("First", "Next", "Then", "Step 2", "Finally", ...); ``target`` - the
last step names the target (a box/plan object, by ref or label, or else a content word of the answer);
``consistency`` - re-answering the question gives the same answer, 1 - Levenshtein / max length >= 0.8
(only when a ``reanswer`` function is given: for synthetic data, the independent geometric solver in
:mod:`r3d_ros.scenes.verify`; for a model-generated set, the model asked again).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
import io
import json
from pathlib import Path
import re
import zipfile

import numpy as np

from r3d_ros.output_format import parse_completion
from r3d_ros.scenes.types import QARecord, Scene, SceneObject

SPLITS = ('train', 'val', 'test')
#: the test questions in wordings the generator never writes (r3d_ros.scenes.paraphrase), same truth
PARAPHRASE_SPLIT = 'test_paraphrase'
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

# ---------------------------------------------------------------------------------------------- scene store


def save_scene(scene: Scene, path: str | Path) -> Path:
    """Write ``scene`` as an ``.npz`` that :func:`numpy.load` reads, byte-identical for identical scenes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {'points': scene.points, 'colors': scene.colors, 'instance': scene.instance,
              'objects': np.array(scene.objects_json())}
    tmp = path.with_suffix('.npz.tmp')
    with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f'{key}.npy', date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)
    return path


def read_scene(path: str | Path) -> Scene:
    """Read a scene written by :func:`save_scene` (the objects JSON is optional, for plain point stores)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z['objects'].reshape(-1)[0])) if 'objects' in z.files else {}
        n = len(z['points'])
        instance = z['instance'] if 'instance' in z.files else np.full(n, -1, np.int32)
        colors = z['colors'] if 'colors' in z.files else np.full((n, 3), 128, np.uint8)
        return Scene(scene_id=meta.get('scene_id', Path(path).stem), points=z['points'], colors=colors,
                     instance=instance, objects=[SceneObject.from_dict(o) for o in meta.get('objects', [])],
                     room_size=meta.get('room_size', [0.0, 0.0, 0.0]))


class SceneStore:
    """A directory of scenes, ``DIR/scenes/<scene_id>.npz`` (``DIR`` may also be the scenes folder itself)."""

    def __init__(self, root: str | Path):
        root = Path(root)
        self.dir = root if root.name == 'scenes' else root / 'scenes'

    def path(self, scene_id: str) -> Path:
        return self.dir / f'{scene_id}.npz'

    def save(self, scene: Scene) -> Path:
        return save_scene(scene, self.path(scene.scene_id))

    def load(self, scene_id: str) -> Scene:
        path = self.path(scene_id)
        if not path.exists():
            raise KeyError(f'scene {scene_id!r} is not in {self.dir}')
        return read_scene(path)

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob('*.npz')) if self.dir.is_dir() else []

    def __contains__(self, scene_id: str) -> bool:
        return self.path(scene_id).exists()

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self):
        return iter(self.ids())


def load_scene(store_dir: str | Path, scene_id: str) -> Scene:
    return SceneStore(store_dir).load(scene_id)


# ---------------------------------------------------------------------------------------------- records

def write_records(path: str | Path, records: Iterable[QARecord]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
        for rec in records:
            f.write(rec.to_json() + '\n')
            n += 1
    return n


def load_records(path: str | Path) -> list[QARecord]:
    """QARecords from a JSON-lines file (our own files, or any with scene_id/question/cot fields)."""
    out = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            if line.strip():
                out.append(QARecord.from_json(line))
    return out


def split_scene_ids(scene_ids: list[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                    seed: int = 0) -> dict[str, list[str]]:
    """Assign whole scenes to train/val/test (shuffled with ``seed``), so no scene leaks across splits."""
    ids = sorted(scene_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(fractions[1] * len(ids)))
    n_test = int(round(fractions[2] * len(ids)))
    if len(ids) >= 3:   # every split gets at least one scene when there are enough
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    val = {ids[i] for i in order[:n_val]}
    test = {ids[i] for i in order[n_val:n_val + n_test]}
    return {'train': [s for s in ids if s not in val and s not in test],
            'val': [s for s in ids if s in val], 'test': [s for s in ids if s in test]}


# ---------------------------------------------------------------------------------------------- quality filter

STEP_MARKERS = re.compile(
    r'\b(?:Step\s+\d+|First(?:ly)?|Second(?:ly)?|Third(?:ly)?|Next|Then|After that|Afterwards|Finally|Lastly|Last)\b')
_STOP = frozenset('the a an is are was were of in on at to and or it its this that there be by for with from as '
                  'so yes no not answer room scene object objects about'.split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert/delete/substitute = 1).

    Hand-written because no edit-distance package is among the project's dependencies; answers are short,
    so the O(len(a) * len(b)) row-by-row dynamic programme is fast enough.
    """
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def similarity(a: str, b: str) -> float:
    """1 - Levenshtein(a, b) / max(len(a), len(b)), on lower-cased, whitespace-normalised text."""
    a, b = ' '.join(a.lower().split()), ' '.join(b.lower().split())
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def count_steps(think: str) -> int:
    return len(STEP_MARKERS.findall(think))


def last_step(think: str) -> str:
    marks = list(STEP_MARKERS.finditer(think))
    return think[marks[-1].start():] if marks else think


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r'[a-z][a-z0-9_]*', text.lower()) if w not in _STOP and len(w) >= 2}


def _tokens(text: str) -> set[str]:
    return {w.strip('.,;:()!?\'"') for w in text.lower().split()}


def target_terms(record: QARecord, answer_text: str) -> set[str]:
    """What the last step must name: box/plan objects (ref and label words), else the answer's content words."""
    terms: set[str] = set()
    refs = [b.get('ref', '') for b in record.boxes] + [s.get('target', '') for s in record.plan]
    for ref in refs:
        if not ref:
            continue
        terms.add(ref.lower())
        head, _, tail = ref.rpartition('_')
        label = head if head and tail.isdigit() else ref
        terms.update(w for w in label.lower().split('_') if len(w) >= 2)
    if not terms:   # no object markup: the thing asked about, i.e. what question and answer both mention
        terms = (_words(record.question) & _words(answer_text)) or _words(record.short_answer) or _words(answer_text)
    return terms


def quality_filter(records: Iterable[QARecord], *, think_min_words: int = 30, answer_min_words: int = 20,
                   min_steps: int = 3, require_target: bool = True,
                   reanswer: Callable[[QARecord], str | None] | None = None, min_consistency: float = 0.8,
                   ) -> tuple[list[QARecord], dict[str, int]]:
    """Keep the records that pass every rule (module docstring); ``counts`` says how many failed each.

    A record is charged to the first rule it fails, in the order format, think_words, answer_words, steps,
    target, consistency; ``counts`` also has ``total`` and ``kept``. ``reanswer(record)`` returns the
    re-derived answer (compared with ``short_answer`` when set, else ``answer``) or None to skip the check.
    """
    counts: Counter = Counter()
    kept: list[QARecord] = []
    for rec in records:
        counts['total'] += 1
        parsed = parse_completion(rec.cot)
        # the text rules read the chain of thought as published: grounded (rec.think / rec.answer) when the
        # completion is written with references and facts (r3d_ros.grounding), else the completion itself
        think, answer_text = rec.think or parsed.think, rec.answer or parsed.answer_text
        reason = None
        if not parsed.format_valid:
            reason = 'format'
        elif len(think.split()) < think_min_words:
            reason = 'think_words'
        elif len(answer_text.split()) < answer_min_words:
            reason = 'answer_words'
        elif count_steps(think) < min_steps:
            reason = 'steps'
        elif require_target and not target_terms(rec, answer_text) & _tokens(last_step(think)):
            reason = 'target'
        elif reanswer is not None:
            again = reanswer(rec)
            if again is not None and similarity(again, rec.short_answer or rec.answer) < min_consistency:
                reason = 'consistency'
        if reason:
            counts[f'dropped_{reason}'] += 1
        else:
            counts['kept'] += 1
            kept.append(rec)
    for rule in ('format', 'think_words', 'answer_words', 'steps', 'target', 'consistency'):
        counts.setdefault(f'dropped_{rule}', 0)
    counts.setdefault('kept', 0)
    return kept, dict(counts)


# ---------------------------------------------------------------------------------------------- generation

def scene_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed of scene ``index`` in a data set made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def _make_one(job: tuple) -> tuple[str, list[dict], dict[str, int]]:
    # module-level so multiprocessing can pickle it; imports here keep worker start-up light
    from r3d_ros.scenes.qa import generate_qa
    from r3d_ros.scenes.synthetic import generate_scene
    from r3d_ros.scenes.verify import solve

    out_dir, seed, index, per_task, point_density, num_objects, filter_kwargs = job
    sseed = scene_seed(seed, index)
    scene = generate_scene(sseed, scene_id=f'scene{seed:04d}_{index:05d}', num_objects=num_objects,
                           point_density=point_density)
    SceneStore(out_dir).save(scene)
    records = generate_qa(scene, sseed, per_task=per_task)
    kept, counts = quality_filter(records, reanswer=lambda r: solve(scene, r), **filter_kwargs)
    return scene.scene_id, [r.to_dict() for r in kept], counts


def make_dataset(out_dir: str | Path, n_scenes: int, seed: int = 0, *, workers: int = 1,
                 per_task: int | dict = 3, point_density: float | None = None,
                 num_objects: tuple[int, int] = (5, 30), fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 filter_kwargs: dict | None = None, progress: Callable[[int], None] | None = None) -> dict:
    """Generate ``n_scenes`` scenes with QA into ``out_dir`` (layout in the module docstring); returns the stats.

    The output does not depend on ``workers``: scenes are seeded by (seed, index) and written in index order.
    ``progress(n)`` is called after each finished scene.
    """
    from r3d_ros.scenes.synthetic import DEFAULT_POINT_DENSITY

    out_dir = Path(out_dir)
    (out_dir / 'scenes').mkdir(parents=True, exist_ok=True)
    filter_kwargs = dict(filter_kwargs or {})
    density = DEFAULT_POINT_DENSITY if point_density is None else float(point_density)
    jobs = [(str(out_dir), seed, i, per_task, density, tuple(num_objects), filter_kwargs) for i in range(n_scenes)]
    by_scene: dict[str, list[dict]] = {}
    totals: Counter = Counter()
    per_task_kept: Counter = Counter()

    def consume(result):
        scene_id, recs, counts = result
        by_scene[scene_id] = recs
        totals.update(counts)
        per_task_kept.update(r['task'] for r in recs)
        if progress is not None:
            progress(1)

    if workers > 1:
        import gc
        import multiprocessing as mp

        # fork: workers need nothing re-imported, and no resource-tracker process outlives the pool.
        # gc.freeze: a forked child must never garbage-collect objects inherited from the parent; a parent
        # holding live rclpy/DDS handles (the test session) had a child segfault in its collector.
        method = 'fork' if 'fork' in mp.get_all_start_methods() else 'spawn'
        gc.freeze()
        try:
            with mp.get_context(method).Pool(workers) as pool:
                for result in pool.imap(_make_one, jobs, chunksize=4):
                    consume(result)
        finally:
            gc.unfreeze()
    else:
        for job in jobs:
            consume(_make_one(job))

    splits = split_scene_ids(list(by_scene), fractions, seed)
    split_sizes = {}
    for split in SPLITS:
        recs = [QARecord.from_dict(r) for sid in splits[split] for r in by_scene[sid]]
        split_sizes[split] = {'scenes': len(splits[split]), 'records': write_records(out_dir / f'{split}.jsonl', recs)}
    split_sizes[PARAPHRASE_SPLIT] = write_paraphrase_split(out_dir, seed)
    stats = {'seed': seed, 'scenes': n_scenes, 'per_task': per_task, 'point_density': density,
             'num_objects': list(num_objects), 'filter': {'think_min_words': 30, 'answer_min_words': 20,
                                                          'min_steps': 3, 'min_consistency': 0.8, **filter_kwargs},
             'generated': totals.get('total', 0), 'kept': totals.get('kept', 0),
             'dropped': {k[len('dropped_'):]: v for k, v in sorted(totals.items()) if k.startswith('dropped_')},
             'kept_per_task': dict(sorted(per_task_kept.items())), 'splits': split_sizes}
    (out_dir / 'stats.json').write_text(json.dumps(stats, indent=2, sort_keys=True) + '\n', encoding='utf-8')
    return stats


def write_paraphrase_split(out_dir: str | Path, seed: int = 0) -> dict:
    """DIR/test_paraphrase.jsonl from DIR/test.jsonl (see :mod:`r3d_ros.scenes.paraphrase`); its sizes."""
    from r3d_ros.scenes.paraphrase import paraphrase_records

    out_dir = Path(out_dir)
    recs, unmatched = paraphrase_records(load_records(out_dir / 'test.jsonl'), seed)
    return {'records': write_records(out_dir / f'{PARAPHRASE_SPLIT}.jsonl', recs), 'unmatched': unmatched}
