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
     ('Could you tell me what color the {a} is?', 'Name the colour of the {a}.', "What's the {a}'s colour?")),
    (rf'How tall is the {_O.format("a")}\?',
     ("What's the {a}'s height?", 'Do you know the height of the {a}?', 'Measure how tall the {a} is for me.')),
    (rf'Which is larger, the {_O.format("a")} or the {_O.format("b")}\?',
     ('Compare the {a} and the {b}: which of the two is bigger?',
      'Would you say the {a} or the {b} is the larger of the two?',
      'Which has the greater size, the {a} or the {b}?')),
    (r'How many (?P<p>[a-z ]+?) are in the room\?',
     ('How many {p} have we got in this room?', 'Could you count how many {p} there are in the room?',
      'Tell me the total number of {p} in here.')),
    (rf'Is there a {_O.format("a")} in the room\?',
     ('Do we have any {a} in here?', "Check whether there's a {a} somewhere in this room.",
      'Is a {a} to be found anywhere in the room?')),
    (rf'Imagine standing at the {_O.format("a")} and facing the {_O.format("b")}\. '
     rf'Is the {_O.format("c")} on your left or on your right\?',
     ('Picture yourself at the {a}, looking straight at the {b}. Would the {c} be on your left-hand side or your '
      'right-hand side?',
      'Suppose I walk over to the {a} and turn to face the {b}. Is the {c} then to my left or to my right?',
      'Pretend you are at the {a} with your face toward the {b}: which side would the {c} be on, left or right?')),
    (rf'Imagine standing at the {_O.format("a")} and facing the {_O.format("b")}\. '
     rf'Is the {_O.format("c")} in front of you or behind you\?',
     ('Picture yourself at the {a}, gazing toward the {b}. Would the {c} be somewhere ahead of you or at your back?',
      'Suppose I walk over to the {a} and turn to face the {b}. Is the {c} then in front of me or behind me?',
      'Say you were positioned at the {a}, oriented toward the {b}. Does the {c} lie in front of you or behind '
      'you?')),
    (rf'Which object is closest to the {_O.format("a")}\?',
     ('Of everything in the room, what sits closest to the {a}?',
      'Could you name the object positioned nearest to the {a}?',
      "What's the thing with the shortest distance to the {a}?")),
    (rf'What is the {_O.format("a")} standing on\?',
     ('What is supporting the {a}?', 'On what has the {a} been placed?',
      'Tell me what the {a} is sitting on top of.')),
    (rf'Which object is between the {_O.format("a")} and the {_O.format("b")}\?',
     ('What sits in the space between the {a} and the {b}?',
      'Could you name the object located between the {a} and the {b}?',
      'What thing can be found between the {a} and the {b}?')),
    (rf'How far is the {_O.format("a")} from the {_O.format("b")}\?',
     ('Could you measure the distance from the {a} to the {b}?', 'How many metres separate the {a} and the {b}?',
      'Tell me how much distance there is between the {a} and the {b}.')),
    (rf'Where is the {_O.format("a")}\?',
     ('Whereabouts is the {a}?', 'Can you tell me the location of the {a}?', 'Point out where the {a} is, please.')),
    (rf'Go and inspect the {_O.format("a")}\.',
     ('Head over to the {a} and take a look at it.', 'Would you go examine the {a}?',
      'I need you to check out the {a} up close.')),
    (rf'Bring the {_O.format("a")} to the {_O.format("b")}\.',
     ('Could you fetch the {a} and drop it off at the {b}?', 'I need the {a} brought over to the {b}.',
      'Would you deliver the {a} to the {b}?')),
    (rf'Put the {_O.format("a")} into the {_O.format("b")}\.',
     ('Could you stick the {a} in the {b}?', 'Pop the {a} inside the {b}, would you?',
      'I want the {a} put away inside the {b}.')),
]
#: wordings for training (``data.paraphrase`` in the SFT config) and the question interpreter's exemplars
#: (r3d_ros/question_intent.py), disjoint from the held-out ones above, so the test_paraphrase split still asks in
#: words the system never saw. The last ones of each were the held-out wordings until session 17: read while
#: diagnosing the interpreter, they could no longer measure unseen wordings, so they became exemplars and the
#: held-out ones above were written afresh by someone who had not seen the interpreter's misses.
TRAIN_PARAPHRASES: list[tuple[str, tuple[str, ...]]] = [
    (PARAPHRASES[0][0], ('What is the colour of the {a}?', 'Which color is the {a}?',
                         'Which colour does the {a} have?', 'Tell me the colour of the {a}.',
                         'What colour would you say the {a} is?')),
    (PARAPHRASES[1][0], ('How high is the {a}?', 'What height does the {a} have?', 'What is the height of the {a}?',
                         'How high does the {a} reach?', 'Give me the height of the {a}.')),
    (PARAPHRASES[2][0], ('Which one is bigger, the {a} or the {b}?', 'Of the {a} and the {b}, which is larger?',
                         'Between the {a} and the {b}, which one is bigger?',
                         'Is the {a} bigger than the {b}, or the other way round?')),
    (PARAPHRASES[3][0], ('How many {p} are there?', 'How many {p} does the room have?', 'Count the {p} you can see.',
                         'What is the number of {p} here?', 'How many {p} can you find?')),
    (PARAPHRASES[4][0], ('Is there any {a} here?', 'Does the room have a {a}?', 'Do you see any {a} here?',
                         'Can you find a {a} anywhere?', 'Does this room contain a {a}?')),
    (PARAPHRASES[5][0], ('Standing at the {a} and looking at the {b}, is the {c} on my left or my right?',
                         'From the {a}, facing the {b}: is the {c} to the left or to the right?',
                         'If you stood by the {a} looking toward the {b}, would the {c} be to your left or to your '
                         'right?',
                         'Seen from the {a} with the {b} straight ahead, is the {c} left or right?')),
    (PARAPHRASES[6][0], ('Standing at the {a} and looking at the {b}, is the {c} in front of me or behind me?',
                         'From the {a}, facing the {b}: is the {c} ahead or behind?',
                         'If you stood by the {a} looking toward the {b}, would the {c} be ahead of you or behind you?',
                         'Seen from the {a} with the {b} straight ahead, is the {c} in front or behind?')),
    (PARAPHRASES[7][0], ('What is closest to the {a}?', 'Which object is nearest to the {a}?',
                         'What is the nearest thing to the {a}?', 'Which object sits nearest the {a}?')),
    (PARAPHRASES[8][0], ('What is the {a} on?', 'What does the {a} stand on?', 'What surface is the {a} resting on?',
                         'What is underneath the {a}?', 'What holds the {a} up?')),
    (PARAPHRASES[9][0], ('What is between the {a} and the {b}?', 'Which object lies between the {a} and the {b}?',
                         'What lies in between the {a} and the {b}?',
                         'Is anything placed between the {a} and the {b}?')),
    (PARAPHRASES[10][0], ('How far apart is the {a} from the {b}?', 'What is the distance from the {a} to the {b}?',
                          'What is the distance between the {a} and the {b}?',
                          'How far apart are the {a} and the {b}?')),
    (PARAPHRASES[11][0], ('Where can I find the {a}?', 'Show me the {a}.', 'Locate the {a} for me.',
                          'Can you show me where the {a} is?', 'Find the {a}.')),
    (PARAPHRASES[12][0], ('Inspect the {a}.', 'Go and check the {a}.', 'Please go and have a look at the {a}.',
                          'Could you check on the {a}?')),
    (PARAPHRASES[13][0], ('Take the {a} to the {b}.', 'Bring the {a} over to the {b}.',
                          'Could you take the {a} over to the {b}?', 'Please carry the {a} to the {b}.',
                          'Move the {a} onto the {b}.')),
    (PARAPHRASES[14][0], ('Put the {a} inside the {b}.', 'Store the {a} in the {b}.',
                          'Could you store the {a} inside the {b}?', 'Place the {a} in the {b}, please.')),
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
