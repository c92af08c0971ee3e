"""Question -> answer for one scene map, without ROS: view selection, the 3D-R1 model, parsing, plan checks.

The reasoner node, the offline evaluator and training's evaluation all call :class:`ScenePipeline`, so a
question gets the same treatment live on a robot, on a replayed bag and on a dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
import re
import threading
import time

import numpy as np

from r3d_ros.output_format import Box, PlanStep, is_format_valid, parse_completion
from r3d_ros.plan_validation import validate_plan

ASSETS = Path(__file__).resolve().parent / 'assets'
#: Embedded default checkpoints, best first: the trained tiny model, then the untrained one.
DEFAULT_MODELS = (ASSETS / 'r3d_tiny', ASSETS / 'r3d_tiny_untrained')

STATUS_OK, STATUS_ERROR, STATUS_BUSY, STATUS_CANCELLED = 'ok', 'error', 'busy', 'cancelled'
STATUS_INVALID_PLAN = 'invalid_plan'
#: the answer refers to an object the map does not have (or states a fact that cannot be looked up): nothing of
#: it is published but the reason
STATUS_UNGROUNDED = 'ungrounded'
#: the question asks about an object of a class the map has no record of ("Where is the sofa?" in a room mapped
#: without one): the answer says so and nothing else goes out, rather than the model naming another object
STATUS_NOT_FOUND = 'not_found'
_ASKS_EXISTENCE = re.compile(r'^\s*(is|are) there\b', re.IGNORECASE)


class PipelineError(RuntimeError):
    """A request the pipeline refuses (bad input, no model): reported to the caller, never fatal."""


@dataclass
class PipelineResult:
    id: str = ''
    question: str = ''
    interpreted_as: str = ''  # the trained wording the model was asked instead (r3d_ros.question_intent), or ''
    task: str | None = None  # informational (the model reads the question itself); kept for evaluation
    status: str = STATUS_OK
    message: str = ''
    think: str = ''
    answer: str = ''
    answer_text: str = ''
    boxes: list[Box] = field(default_factory=list)
    plan: list[PlanStep] = field(default_factory=list)
    format_valid: bool = False
    views: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    raw: str = ''
    objects: list[dict] = field(default_factory=list)   # the map's object records (r3d_ros.scene_objects)
    facts: list[dict] = field(default_factory=list)     # every fact the answer states: fact, args, value, text
    map_points: int = 0  # points of the map this answer was computed on (0: none; the answer says 'no map yet')

    def to_dict(self) -> dict:
        d = asdict(self)
        d['boxes'] = [{'ref': b.ref, 'label': b.label, 'center': list(b.center), 'size': list(b.size)}
                      for b in self.boxes]
        d['plan'] = [{'action': s.action, 'target': s.target, 'position': list(s.position)} for s in self.plan]
        return d


def check_question(question: str, max_chars: int = 2000) -> str:
    """The stripped question, or PipelineError for an empty or oversized one."""
    question = (question or '').strip()
    if not question:
        raise PipelineError('empty question')
    if len(question) > max_chars:
        raise PipelineError(f'question has {len(question)} characters (limit {max_chars})')
    return question


def default_model_path() -> Path:
    for p in DEFAULT_MODELS:
        if (p / 'config.json').exists():
            return p
    raise PipelineError('no embedded model found under ' + ', '.join(map(str, DEFAULT_MODELS)))


def pick_device(device: str = 'auto') -> str:
    import torch

    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise PipelineError(f'device {device!r} requested but CUDA is not available')
    return device


class _TokenCallbackStreamer:
    """transformers streamer protocol (put/end) forwarding decoded text pieces to a callback."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]):
        self.tokenizer, self.on_text = tokenizer, on_text
        self._ids: list[int] = []
        self._sent = 0
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self._ids.extend(int(v) for v in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self._ids, skip_special_tokens=False)
        if len(text) > self._sent:
            self.on_text(text[self._sent:])
            self._sent = len(text)

    def end(self) -> None:
        pass


class ScenePipeline:
    """View selection + 3D-R1 generation + parsing + plan validation for one question on one map."""

    def __init__(self, model, processor, selector=None, device: str = 'cpu', num_views: int = 6,
                 max_new_tokens: int = 256, max_question_chars: int = 2000, regenerations: int = 2,
                 grammar: bool = True, interpret: bool = True):
        self.model, self.processor, self.selector = model, processor, selector
        self.device, self.num_views = device, num_views
        self.regenerations = regenerations   # sampled retries of a refused (ungrounded / invalid plan) answer
        self.grammar = grammar               # decoding held to the grounded grammar (r3d_ros.grammar_decoding)
        self.max_new_tokens, self.max_question_chars = max_new_tokens, max_question_chars
        self.model_path = ''
        self._lock = threading.Lock()  # one generation at a time per model
        classes = getattr(getattr(model, 'config', None), 'object_class_names', None)
        self.interpreter = None        # questions in other wordings read as a trained one (loads MiniLM at first use)
        if interpret and classes:
            from r3d_ros.question_intent import QuestionInterpreter

            self.interpreter = QuestionInterpreter(classes, device=device)
        # the selected views reach the model only through a view tower; without one they are reported, not used
        self.uses_views = bool(getattr(getattr(model, 'config', None), 'use_views', False))
        self._view_encoding_s = 0.0
        if self.uses_views:
            self._time_view_encoders()

    def _time_view_encoders(self) -> None:
        """Forward hooks on the view tower and depth encoder that add their wall time to ``_view_encoding_s``
        (they run inside ``generate``, so timing them from outside would need a second forward)."""
        started: list[float] = []

        def before(module, args):
            started.append(time.perf_counter())

        def after(module, args, output):
            self._view_encoding_s += time.perf_counter() - started.pop()

        for name in ('vision_tower', 'depth_encoder'):
            module = getattr(self.model, name, None)
            if module is not None:
                module.register_forward_pre_hook(before)
                module.register_forward_hook(after)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = 'auto', num_views: int = 6,
                        max_new_tokens: int = 256, with_views: bool = True, **kw) -> ScenePipeline:
        """Load model + processor from ``path`` (default: the embedded checkpoint) and a view selector."""
        path = Path(path) if path else default_model_path()
        if not (path / 'config.json').exists():
            raise PipelineError(f'no model checkpoint at {path} (config.json missing)')
        import torch

        from r3d_ros.model import R3DForConditionalGeneration, R3DProcessor

        device = pick_device(device)
        dtype = torch.bfloat16 if device.startswith('cuda') else torch.float32
        model = R3DForConditionalGeneration.from_pretrained(str(path), dtype=dtype).to(device).eval()
        processor = R3DProcessor.from_pretrained(str(path))
        selector = None
        # Views are selected even for a model without a view tower (the embedded tiny one): the robot's
        # operator still sees which parts of the map were judged relevant; they are only fed to a model
        # that was trained with them.
        if with_views and num_views > 0:
            try:
                from r3d_ros.views import ViewSelector, ViewSelectorConfig
            except ImportError:
                # no view selection in this install: the model answers from the point-cloud tokens alone
                ViewSelector = None
            if ViewSelector is not None:
                selector = ViewSelector(ViewSelectorConfig(top_k=num_views), device=device)
        pipe = cls(model, processor, selector, device=device, num_views=num_views,
                   max_new_tokens=max_new_tokens, **kw)
        pipe.model_path = str(path)
        return pipe

    # -----------------------------------------------------------------------------------------
    def check_question(self, question: str) -> str:
        return check_question(question, self.max_question_chars)

    def answer(self, points: np.ndarray, colors: np.ndarray, question: str, query_id: str = '',
               stop_event: threading.Event | None = None, on_text: Callable[[str], None] | None = None,
               known_objects: dict[str, Box] | None = None) -> PipelineResult:
        """Answer ``question`` about the map (points (N,3) metres, colors (N,3) uint8). Never raises."""
        result = PipelineResult(id=query_id, question=question)
        t0 = time.perf_counter()
        try:
            result.question = question = self.check_question(question)
            if points is None or len(points) == 0:
                raise PipelineError('no map yet (empty scene)')
            result.map_points = int(len(points))
            points = np.asarray(points, np.float32)
            colors = np.asarray(colors, np.uint8) if colors is not None else np.full((len(points), 3), 128, np.uint8)
            with self._lock:
                self._run(points, colors, self._interpret(question, result), result, stop_event, on_text)
            if result.status == STATUS_OK and result.plan and not result.objects:
                # a model without object records: its plan is checked here (with records, published_status did)
                self._check_plan(points, result, known_objects)
            if result.status in (STATUS_UNGROUNDED, STATUS_INVALID_PLAN):  # nothing ungrounded reaches a robot
                result.boxes, result.plan, result.facts = [], [], []
                if result.status == STATUS_UNGROUNDED:
                    result.answer_text = ''  # not true of the map; ``raw`` keeps what the model wrote
        except PipelineError as exc:
            result.status, result.message = STATUS_ERROR, str(exc)
        except Exception as exc:  # noqa: BLE001 - a node must answer every request, whatever broke
            result.status, result.message = STATUS_ERROR, _describe(exc)
            _release_gpu_memory()
        result.timings['total_s'] = time.perf_counter() - t0
        return result

    def _interpret(self, question: str, result: PipelineResult) -> str:
        """What the model is asked: ``question``, or the trained wording it was read as (``interpreted_as``)."""
        if self.interpreter is None:
            return question
        t = time.perf_counter()
        read = self.interpreter(question)
        result.timings['interpret_s'] = time.perf_counter() - t
        result.interpreted_as = read.question if read.changed else ''
        return read.question

    def _run(self, points, colors, question, result, stop_event, on_text) -> None:
        t = time.perf_counter()
        views_rgb = views_depth = None
        if self.selector is not None:
            selection = self.selector.select(points, colors, question, k=self.num_views)
            if getattr(self.model.config, 'use_views', False):
                views_rgb = [[v.rgb for v in selection.views]]
                views_depth = [[v.depth for v in selection.views]]
            result.views = [{'index': int(v.index), 'kind': selection.kinds[v.index],
                             'hfov_deg': selection.intrinsics.hfov_deg, 'pose': np.asarray(v.pose).tolist(),
                             'scores': {k: float(s) for k, s in v.scores.items()}} for v in selection.views]
        result.timings['view_selection_s'] = time.perf_counter() - t
        if stop_event is not None and stop_event.is_set():
            result.status = STATUS_CANCELLED
            return
        t = time.perf_counter()
        cloud = np.concatenate([points, colors.astype(np.float32) / 255.0], axis=1)
        batch = self.processor(questions=[question], point_clouds=[cloud], views=views_rgb, depths=views_depth,
                               return_tensors='pt')
        batch = {k: (v.to(self.device) if hasattr(v, 'to') else v) for k, v in batch.items()}
        result.timings['preprocess_s'] = time.perf_counter() - t

        tokenizer = getattr(self.processor, 'tokenizer', self.processor)
        streamer = _TokenCallbackStreamer(tokenizer, on_text) if on_text is not None else None
        timings = result.timings
        timings['generate_s'] = timings['grounding_s'] = 0.0
        self._view_encoding_s = 0.0
        objects = self._object_records(batch['point_clouds'])
        refusal = objects is not None and not_found_answer(question, objects[2], self.processor.class_names)
        if refusal:   # no generation: whatever the model wrote would name another object
            timings.update(view_encoding_s=0.0, new_tokens=0, regenerations=0)
            result.objects, result.status, result.message = refusal['objects'], refusal['status'], refusal['message']
            result.think, result.answer_text = refusal['think'], refusal['answer_text']
            return
        for attempt in range(1 + self.regenerations):
            # greedy first; a refused answer (ungrounded, invalid plan) is decoded again with sampling, seeded so
            # that the same question on the same map gets the same retries
            t = time.perf_counter()
            text, n_tokens = self._decode(batch, stop_event, streamer if attempt == 0 else None, attempt or None,
                                          objects, question)
            timings['generate_s'] += time.perf_counter() - t
            timings['new_tokens'], timings['regenerations'] = n_tokens, attempt
            result.raw, result.status, result.message = text, STATUS_OK, ''
            if stop_event is not None and stop_event.is_set():
                result.status, result.message = STATUS_CANCELLED, 'cancelled while decoding'
                break
            t = time.perf_counter()
            text = self._ground(text, objects, points, question, result)
            timings['grounding_s'] += time.perf_counter() - t
            if result.status == STATUS_OK:
                break
        timings['view_encoding_s'] = self._view_encoding_s   # 0 for a checkpoint without a view tower
        parsed = parse_completion(text)
        result.think, result.answer = parsed.think, parsed.answer
        result.answer_text, result.plan = parsed.answer_text, parsed.plan
        labels = {o['id']: o['label'] for o in result.objects}
        result.boxes = [Box(b.ref, b.center, b.size, category=labels.get(b.ref, '')) for b in parsed.boxes]
        result.format_valid = parsed.format_valid

    def _decode(self, batch, stop_event, streamer, seed: int | None = None, objects=None,
                question: str = '') -> tuple[str, int]:
        """One completion (greedy, or sampled with ``seed``; markers kept, pad/eos dropped) and its length;
        held to the grounded grammar of ``objects`` (the map's records) when the pipeline's ``grammar`` is on."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), bool(stop_event is not None and stop_event.is_set()),
                                  dtype=torch.bool, device=input_ids.device)

        sampling = decoding_kwargs(seed)
        rules = LogitsProcessorList()
        if objects is not None and self.grammar:
            rules.append(self.processor.grammar([objects[2]], [question]))
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, **sampling, logits_processor=rules,
                                      stopping_criteria=StoppingCriteriaList([_Cancel()]), streamer=streamer)
        new_tokens = out[0, batch['input_ids'].shape[1]:]
        tokenizer = getattr(self.processor, 'tokenizer', self.processor)
        return _strip_special(self.processor.batch_decode(new_tokens[None])[0], tokenizer), int(new_tokens.numel())

    def _object_records(self, clouds):
        """(cloud, class probabilities, object records) of the map for an object-identifier model, else None."""
        if not getattr(self.processor, 'object_refs', False):
            return None
        probs = self.model.object_class_probs(clouds)
        cloud, probs = clouds[0], (None if probs is None else probs[0])
        return cloud, probs, self.processor.object_records(cloud, probs)

    def _ground(self, text: str, objects, points: np.ndarray, question: str, result: PipelineResult) -> str:
        """Fill the completion's references and facts in from the map's object records (``r3d_ros.grounding``)
        and decide its status (:func:`published_status`); a model without object identifiers (``objects``
        None) writes its numbers itself and is passed through."""
        if objects is None:
            return text
        cloud, probs, records = objects
        result.objects = [r.to_dict() for r in records]
        grounded = self.processor.ground(text, cloud, probs, map_points=points, question=question)
        result.facts = grounded.facts
        if result.status == STATUS_OK:
            result.status, result.message = published_status(grounded, records, points,
                                                             on_shape(self.processor, text, question))
        # what did not ground is not published, reasoning included (``raw`` keeps it)
        return grounded.text if grounded.ok else ''

    def _check_plan(self, points: np.ndarray, result: PipelineResult, known: dict[str, Box] | None) -> None:
        objects = dict(known or {})
        objects.update({o['id']: Box(o['id'], tuple(o['center']), tuple(o['size'])) for o in result.objects})
        objects.update({b.ref: b for b in result.boxes})
        errors = plan_errors(result.plan, objects, points)
        if errors:
            result.status, result.message = STATUS_INVALID_PLAN, '; '.join(errors)


def not_in_map(question: str, records, class_names) -> list[str]:
    """The object phrases of ``question`` whose class no record has, when the question takes the object to exist:
    not an existence question ("Is there a sofa?", answered from the records), and singular phrases only (a
    plural is counted, and none is an answer). Colour aside: a chair of another colour is still a chair, and the
    grammar keeps to the asked colour when the map has it."""
    from r3d_ros.answer_shapes import class_word, question_phrases
    from r3d_ros.grounding import label_text, plural

    if _ASKS_EXISTENCE.match(question):
        return []
    plurals = {plural(c) for c in class_names}
    have = {label_text(r.label) for r in records}
    return [p for p in question_phrases(question, class_names) if p not in plurals and class_word(p) not in have]


def not_found_answer(question: str, records, class_names) -> dict | None:
    """The ``answer`` JSON of a question about objects of classes the map has no record of (:func:`not_in_map`):
    status ``not_found``, 'I see no sofa in the map.', nothing else; None when the map has them all. One rule
    for the reasoner and the evaluation."""
    from r3d_ros.answer_shapes import class_word

    missing = list(dict.fromkeys(class_word(p) for p in not_in_map(question, records, class_names)))
    if not missing:
        return None
    message = f'the map has no object of the asked class ({", ".join(missing)})'
    return {'status': STATUS_NOT_FOUND, 'message': message, 'think': message.capitalize() + '.',
            'answer_text': f'I see no {" or ".join(missing)} in the map.', 'facts': [], 'boxes': [], 'plan': [],
            'objects': [r.to_dict() for r in records]}


def decoding_kwargs(seed: int | None) -> dict:
    """``generate`` settings of one attempt: greedy (``seed`` None), or a retry of a refused answer sampled at
    temperature 0.7 / top-p 0.95 after seeding torch with ``seed`` (the reasoner's and the evaluation's rule)."""
    if seed is None:
        return {'do_sample': False}
    import torch

    torch.manual_seed(seed)
    return {'do_sample': True, 'temperature': 0.7, 'top_p': 0.95}


def plan_errors(plan, objects: dict[str, Box], points: np.ndarray) -> list[str]:
    """Why ``plan`` cannot be executed on this map (``r3d_ros.plan_validation``); empty when it can."""
    check = validate_plan(plan, objects, (points.min(axis=0), points.max(axis=0)))
    return [] if check.ok else list(check.errors)


#: a completion whose reasoning or answer leaves the model's answer shapes before this share of its symbols is
#: refused: the grounded grammar alone then lets word salad through ('The wardrobe (obj_0) is in front of you fr of
#: the 2.27 m to the left fort of'). On the test split's off-shape answers, those with a trained sentence and an odd
#: ending walk >= 0.9, the salad <= 0.4.
MIN_ON_SHAPE = 0.75


def on_shape(processor, written: str, question: str) -> float:
    """:meth:`AnswerShapes.share_on_shape` of what the model wrote (1.0 for a model without answer shapes)."""
    shapes = getattr(processor, 'shapes', None) if getattr(processor, 'answer_shapes', None) else None
    return shapes.share_on_shape(written, question) if shapes is not None else 1.0


def published_status(grounded, records, points: np.ndarray, on_shape: float = 1.0) -> tuple[str, str]:
    """(status, message) a grounded completion is published with: ``ungrounded`` when it refers to what the map
    lacks, leaves markup unresolved or left the model's answer shapes early (``on_shape`` < ``MIN_ON_SHAPE``)
    (``invalid_plan`` when it is a plan), ``invalid_plan`` when its plan does not validate on the map and its
    records, else ``ok``. One rule for the reasoner and the evaluation."""
    has_plan = '<plan>' in grounded.text
    refused = STATUS_INVALID_PLAN if has_plan else STATUS_UNGROUNDED
    if not grounded.ok:
        return refused, 'answer not grounded on the map: ' + '; '.join(grounded.errors)
    if on_shape < MIN_ON_SHAPE:
        return refused, f'answer left the sentences the model was trained on ({on_shape:.0%} of it on them)'
    if not is_format_valid(grounded.text):   # cut off by the token budget: half an answer is not an answer
        return refused, 'answer incomplete: not one <think>...</think><answer>...</answer> (max_new_tokens reached?)'
    plan = parse_completion(grounded.text).plan
    if has_plan or plan:
        objects = {r.id: r.box for r in records}
        errors = plan_errors(plan, objects, points)
        if errors:
            return STATUS_INVALID_PLAN, '; '.join(errors)
    return STATUS_OK, ''


def grounded_answer(grounded, records, points: np.ndarray, on_shape: float = 1.0) -> dict:
    """A grounded completion as the ``answer`` JSON the reasoner would publish for it (status by
    :func:`published_status`; a refused answer carries no boxes, plan or facts, one that did not ground no text):
    what the evaluation scores and the GRPO key-fact reward reads, by the reasoner's own rule."""
    status, message = published_status(grounded, records, points, on_shape)
    p, ok = parse_completion(grounded.text if grounded.ok and status != STATUS_UNGROUNDED else ''), status == STATUS_OK
    return {'status': status, 'message': message, 'think': p.think, 'answer_text': p.answer_text,
            'facts': grounded.facts if ok else [],
            'boxes': [{'ref': b.ref, 'center': list(b.center), 'size': list(b.size)} for b in p.boxes] if ok else [],
            'plan': [{'action': st.action, 'target': st.target, 'position': list(st.position)} for st in p.plan]
            if ok else [], 'objects': [r.to_dict() for r in records]}


def _strip_special(text: str, tokenizer) -> str:
    """Drop padding/eos markers but keep the think/answer/box/plan markers the parser needs."""
    for tok in {getattr(tokenizer, 'eos_token', None), getattr(tokenizer, 'pad_token', None),
                getattr(tokenizer, 'bos_token', None)} - {None}:
        text = text.replace(tok, '')
    return text.strip()


def _describe(exc: BaseException) -> str:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return f'GPU out of memory: {exc}'.splitlines()[0]
    return f'{type(exc).__name__}: {exc}'.splitlines()[0][:500]


def _release_gpu_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort cleanup after a failure
        pass
