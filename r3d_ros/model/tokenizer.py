"""The tiny model's tokenizer: byte-level BPE trained with `tokenizers` on the project's own text.

Digits are split one by one (box coordinates are text, and a tiny LM learns numbers digit by digit), and
every marker of the completion grammar plus the prompt/placeholder tokens is a single special token.
Training text: the grammar's own strings (system prompt, actions, boxes, plans) plus text generated from the
project's synthetic scenes (``r3d_ros.scenes.synthetic``: object labels, colours, ids and their boxes; and
``r3d_ros.scenes.qa`` questions/answers when that module exists).

The tiny tokenizer carries a chat template (``CHAT_TEMPLATE``); a real Qwen tokenizer keeps its own and gets
the missing marker/placeholder tokens from :func:`prepare_tokenizer`.

Rebuild: ``python -m r3d_ros.model.tokenizer r3d_ros/assets/r3d_tiny_tokenizer``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from r3d_ros.output_format import ACTIONS, MARKERS, SYSTEM_PROMPT

PAD, EOS = '<|pad|>', '<|end|>'
SYSTEM, USER, ASSISTANT = '<|system|>', '<|user|>', '<|assistant|>'
SCENE, VIEW, DEPTH = '<scene>', '<view>', '<depth>'
SPECIAL_TOKENS = [PAD, EOS, SYSTEM, USER, ASSISTANT, SCENE, VIEW, DEPTH, *MARKERS]
#: Tokens the model needs in any tokenizer (a real backbone's tokenizer gets the missing ones added).
MODEL_TOKENS = [SCENE, VIEW, DEPTH, *MARKERS]

#: One-turn chat template of the tiny tokenizer: <|system|>S<|user|>U<|assistant|>A<|end|>
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{% elif m['role'] == 'user' %}<|user|>{% else %}<|assistant|>{% endif %}"
    "{{ m['content'] }}{% if m['role'] == 'assistant' %}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

LABELS = ('chair', 'table', 'sofa', 'bed', 'lamp', 'cabinet', 'shelf', 'monitor', 'plant', 'box', 'desk', 'stool',
          'bin', 'cup', 'book', 'bottle', 'tv', 'door', 'window', 'pillow', 'vase', 'fridge', 'toilet', 'sink',
          'bathtub', 'cylinder', 'backpack', 'laptop', 'keyboard', 'picture', 'wardrobe', 'nightstand', 'dresser')
COLORS = ('red', 'green', 'blue', 'yellow', 'white', 'black', 'gray', 'brown', 'beige', 'orange', 'purple', 'pink')
PHRASES = (
    'First, I locate the {c} {l} in the scene. Next, I look at its position relative to the room. Then, I compare '
    'it with the other objects. Finally, the answer is the {l}.',
    'How many {l}s are in the room? Where is the {c} {l}? What color is the {l}? Is there a {l} in the room?',
    'Which object is closest to the {l}? What is on top of the {l}? Bring the {l} to the {l2}. '
    'The {l} is to the left of the {l2} when facing the window. The distance between them is about 1.5 meters.',
    'Step 1: find the {l}. Step 2: find the {l2}. Step 3: navigate to the {l}, pick it, then place it on the {l2}.',
)


def word_token_ids(tokenizer, words) -> list[int]:
    """The first token of each word as it appears mid-sentence (' trash can' -> ' trash')."""
    return [tokenizer(' ' + w.replace('_', ' '), add_special_tokens=False)['input_ids'][0] for w in words]


def corpus() -> list[str]:
    lines = [SYSTEM_PROMPT, ' '.join(ACTIONS), ' '.join(str(i) for i in range(100))]
    for (l1, l2), c in itertools.product(itertools.permutations(LABELS[:12], 2), COLORS):
        lines += [p.format(l=l1, l2=l2, c=c) for p in PHRASES]
    for v in range(0, 1000, 7):
        lines.append(f'<box>chair_{v % 30} {v / 100:.2f} {-v / 200:.2f} 0.45 0.50 0.50 0.90</box>')
    return lines + scene_corpus()


def scene_corpus(num_scenes: int = 40) -> list[str]:
    """Text from the project's synthetic scenes (labels, colours, ids, boxes; Q&A when ``qa`` exists)."""
    try:
        from r3d_ros.scenes.synthetic import generate_scene
    except ImportError:
        return []
    try:
        from r3d_ros.scenes.qa import generate_qa
    except ImportError:
        generate_qa = None
    lines = []
    for seed in range(num_scenes):
        scene = generate_scene(seed, point_density=20.0)
        for obj in scene.objects:
            name = f'{obj.label}_{obj.id}'
            box = ' '.join(f'{v:.2f}' for v in (*obj.center, *obj.size))
            lines.append(f'The {obj.color_name} {obj.label.replace("_", " ")} {name} is at <box>{name} {box}</box>')
        if generate_qa is not None:
            for item in generate_qa(scene):
                fields = item if isinstance(item, dict) else vars(item)
                lines += [v for v in fields.values() if isinstance(v, str)]
    return lines


#: Object identifier token of object-token slot k (``<obj_k>``, Chat-Scene's object identifiers): a box whose
#: numbers are an object proposal's is written as ``<box>ref <obj_k></box>`` and the processor writes the
#: proposal's numbers back in (``R3DProcessor.resolve_object_refs``).
OBJECT_REF = '<obj_{}>'


def add_object_refs(tokenizer, count: int) -> list[int]:
    """Add the identifier tokens ``<obj_0>`` … ``<obj_{count-1}>`` (special, so never split) and return their
    ids in slot order. Resize the model's embeddings to ``len(tokenizer)`` afterwards."""
    names = [OBJECT_REF.format(k) for k in range(count)]
    missing = [t for t in names if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({'additional_special_tokens': missing}, replace_extra_special_tokens=False)
    return [int(i) for i in tokenizer.convert_tokens_to_ids(names)]


def prepare_tokenizer(tokenizer) -> int:
    """Make a backbone's tokenizer (e.g. Qwen2.5's) usable by R3D: add the placeholder and grammar markers
    as special tokens, and a pad token if it has none. Returns how many tokens were added (resize the
    backbone's embeddings to ``len(tokenizer)`` when non-zero)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in MODEL_TOKENS if t not in vocab]
    added = tokenizer.add_special_tokens({'additional_special_tokens': missing},
                                         replace_extra_special_tokens=False) if missing else 0
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({'pad_token': PAD})
    return added


def train_tokenizer(vocab_size: int = 1200) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS,
                                   additional_special_tokens=SPECIAL_TOKENS[2:], padding_side='left')
    fast.chat_template = CHAT_TEMPLATE
    return fast


if __name__ == '__main__':
    out = Path(sys.argv[1] if len(sys.argv) > 1 else 'r3d_tiny_tokenizer')
    train_tokenizer().save_pretrained(str(out))
    print(f'wrote {out}')
