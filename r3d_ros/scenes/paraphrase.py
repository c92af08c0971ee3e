"""Held-out wordings: the test questions asked the way a person might ask them, not the way the generator does.

A model trained on the generator's templates can learn the template instead of the question. The
``test_paraphrase`` split asks every test question again in one of these wordings (none of them occurs in
training) with the same truth, so the key-fact accuracy on it against ``test`` measures how much of the answer
hangs on the template. Each pattern matches one generator template (``r3d_ros.scenes.qa``) and captures its
object / class words; an unmatched question is kept as it is (and counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
import random
import re

from r3d_ros.scenes.types import QARecord

_O = r'(?P<{}>[a-z][a-z ]*?)'   # an object phrase: class words, maybe a colour first ('black desk')

#: generator template -> wordings the generator never writes (fields: the template's captured phrases)
PARAPHRASES: list[tuple[str, tuple[str, ...]]] = [
    (rf'What color is the {_O.format("a")}\?',
     ('Which colour does the {a} have?', 'Tell me the colour of the {a}.', 'What colour would you say the {a} is?')),
    (rf'How tall is the {_O.format("a")}\?',
     ('What is the height of the {a}?', 'How high does the {a} reach?', 'Give me the height of the {a}.')),
    (rf'Which is larger, the {_O.format("a")} or the {_O.format("b")}\?',
     ('Between the {a} and the {b}, which one is bigger?', 'Is the {a} bigger than the {b}, or the other way round?')),
    (r'How many (?P<p>[a-z ]+?) are in the room\?',
     ('Count the {p} you can see.', 'What is the number of {p} here?', 'How many {p} can you find?')),
    (rf'Is there a {_O.format("a")} in the room\?',
     ('Do you see any {a} here?', 'Can you find a {a} anywhere?', 'Does this room contain a {a}?')),
    (rf'Imagine standing at the {_O.format("a")} and facing the {_O.format("b")}\. '
     rf'Is the {_O.format("c")} on your left or on your right\?',
     ('If you stood by the {a} looking toward the {b}, would the {c} be to your left or to your right?',
      'Seen from the {a} with the {b} straight ahead, is the {c} left or right?')),
    (rf'Imagine standing at the {_O.format("a")} and facing the {_O.format("b")}\. '
     rf'Is the {_O.format("c")} in front of you or behind you\?',
     ('If you stood by the {a} looking toward the {b}, would the {c} be ahead of you or behind you?',
      'Seen from the {a} with the {b} straight ahead, is the {c} in front or behind?')),
    (rf'Which object is closest to the {_O.format("a")}\?',
     ('What is the nearest thing to the {a}?', 'Which object sits nearest the {a}?')),
    (rf'What is the {_O.format("a")} standing on\?',
     ('What surface is the {a} resting on?', 'What is underneath the {a}?', 'What holds the {a} up?')),
    (rf'Which object is between the {_O.format("a")} and the {_O.format("b")}\?',
     ('What lies in between the {a} and the {b}?', 'Is anything placed between the {a} and the {b}?')),
    (rf'How far is the {_O.format("a")} from the {_O.format("b")}\?',
     ('What is the distance between the {a} and the {b}?', 'How far apart are the {a} and the {b}?')),
    (rf'Where is the {_O.format("a")}\?',
     ('Locate the {a} for me.', 'Can you show me where the {a} is?', 'Find the {a}.')),
    (rf'Go and inspect the {_O.format("a")}\.',
     ('Please go and have a look at the {a}.', 'Could you check on the {a}?')),
    (rf'Bring the {_O.format("a")} to the {_O.format("b")}\.',
     ('Could you take the {a} over to the {b}?', 'Please carry the {a} to the {b}.', 'Move the {a} onto the {b}.')),
    (rf'Put the {_O.format("a")} into the {_O.format("b")}\.',
     ('Could you store the {a} inside the {b}?', 'Place the {a} in the {b}, please.')),
]
#: wordings for training (``data.paraphrase`` in the SFT config), disjoint from the held-out ones above, so
#: the test_paraphrase split still asks in words the model never saw
TRAIN_PARAPHRASES: list[tuple[str, tuple[str, ...]]] = [
    (PARAPHRASES[0][0], ('What is the colour of the {a}?', 'Which color is the {a}?')),
    (PARAPHRASES[1][0], ('How high is the {a}?', 'What height does the {a} have?')),
    (PARAPHRASES[2][0], ('Which one is bigger, the {a} or the {b}?', 'Of the {a} and the {b}, which is larger?')),
    (PARAPHRASES[3][0], ('How many {p} are there?', 'How many {p} does the room have?')),
    (PARAPHRASES[4][0], ('Is there any {a} here?', 'Does the room have a {a}?')),
    (PARAPHRASES[5][0], ('Standing at the {a} and looking at the {b}, is the {c} on my left or my right?',
                         'From the {a}, facing the {b}: is the {c} to the left or to the right?')),
    (PARAPHRASES[6][0], ('Standing at the {a} and looking at the {b}, is the {c} in front of me or behind me?',
                         'From the {a}, facing the {b}: is the {c} ahead or behind?')),
    (PARAPHRASES[7][0], ('What is closest to the {a}?', 'Which object is nearest to the {a}?')),
    (PARAPHRASES[8][0], ('What is the {a} on?', 'What does the {a} stand on?')),
    (PARAPHRASES[9][0], ('What is between the {a} and the {b}?', 'Which object lies between the {a} and the {b}?')),
    (PARAPHRASES[10][0], ('How far apart is the {a} from the {b}?', 'What is the distance from the {a} to the {b}?')),
    (PARAPHRASES[11][0], ('Where can I find the {a}?', 'Show me the {a}.')),
    (PARAPHRASES[12][0], ('Inspect the {a}.', 'Go and check the {a}.')),
    (PARAPHRASES[13][0], ('Take the {a} to the {b}.', 'Bring the {a} over to the {b}.')),
    (PARAPHRASES[14][0], ('Put the {a} inside the {b}.', 'Store the {a} in the {b}.')),
]


def _compiled(table):
    return [(re.compile(p + '$'), alts) for p, alts in table]


_HELD_OUT, _TRAIN = _compiled(PARAPHRASES), _compiled(TRAIN_PARAPHRASES)


def is_template_wording(question: str) -> bool:
    """Whether ``question`` is in one of the generator's wordings (the templates ``PARAPHRASES`` match)."""
    return any(pattern.match(question.strip()) for pattern, _ in _HELD_OUT)


def paraphrase(question: str, rng: random.Random, train: bool = False) -> str | None:
    """Another wording of a generator question (its phrases kept; ``train``: a training wording, else a held-out
    one), or None when no template matches."""
    for pattern, alts in _TRAIN if train else _HELD_OUT:
        m = pattern.match(question.strip())
        if m:
            return rng.choice(alts).format(**m.groupdict())
    return None


def paraphrase_records(records: Sequence[QARecord], seed: int = 0, train: bool = False,
                       share: float = 1.0) -> tuple[list[QARecord], int]:
    """The records asked in other wordings (same truth): held-out ones, or (``train``) training ones for a
    ``share`` of them; also how many no template matched (kept as they are)."""
    rng = random.Random(seed)
    out, unmatched = [], 0
    for rec in records:
        q = paraphrase(rec.question, rng, train) if rng.random() < share else rec.question
        unmatched += q is None
        out.append(replace(rec, question=q or rec.question))
    return out, unmatched
