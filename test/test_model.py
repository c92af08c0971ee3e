"""The 3D-R1 model: shapes, learning, exact generation, save/load, batching, LoRA counts, local backbones."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Siglip2VisionConfig,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from r3d_ros.model import R3DConfig, R3DForConditionalGeneration, R3DProcessor
from r3d_ros.model.lora import apply_lora, count_parameters
from r3d_ros.model.presets import build_from_local_paths, build_tiny_model_and_processor, paper_config, tiny_tokenizer
from r3d_ros.output_format import Box, PlanStep, format_completion, parse_completion

torch.set_num_threads(1)


def _cloud(seed, n=1500):
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([0, 0, 0], [5, 4, 2.5], (n, 3))
    return np.concatenate([xyz, rng.uniform(0, 1, (n, 3))], axis=1).astype(np.float32)


def _views(seed, k):
    rng = np.random.default_rng(seed)
    return ([(rng.uniform(0, 255, (40, 56, 3))).astype(np.uint8) for _ in range(k)],
            [rng.uniform(0.5, 6, (40, 56)).astype(np.float32) for _ in range(k)])


TARGETS = [
    format_completion('First, I find the red chair. Next, I read its box. Finally, the target is the chair.',
                      'The red chair is by the wall.', [Box('chair_3', (1.25, -0.40, 0.45), (0.50, 0.50, 0.90))]),
    format_completion('First, the box is on the floor. Then the table is near. Finally, place it on the table.',
                      'Bring it to the table.', plan=[PlanStep('navigate_to', 'box_2', (2.0, 1.0, 0.0)),
                                                      PlanStep('pick', 'box_2', (2.0, 1.2, 0.2))]),
]
QUESTIONS = ['Where is the red chair?', 'Bring the box to the table.']


@pytest.fixture(scope='module')
def tiny():
    return build_tiny_model_and_processor(seed=0)


def test_forward_backward_shapes(tiny):
    model, proc = tiny
    v, d = _views(0, 3)
    batch = proc(questions=QUESTIONS[:1], point_clouds=[_cloud(0)], views=[v], depths=[d], targets=TARGETS[:1])
    assert batch['point_clouds'].shape == (1, model.config.num_points, 6)
    assert batch['view_pixel_values'].shape == (1, 3, 3, 64, 64)
    n_scene = (batch['input_ids'] == model.config.scene_token_id).sum().item()
    n_view = (batch['input_ids'] == model.config.view_token_id).sum().item()
    assert (n_scene, n_view) == (model.config.num_scene_tokens, 3 * model.config.num_view_tokens)
    out = model(**batch)
    assert out.logits.shape == (*batch['input_ids'].shape, model.config.text_config.vocab_size)
    out.loss.backward()
    for name in ('point_encoder', 'scene_projector', 'view_projector', 'depth_encoder', 'vision_tower'):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None for g in grads), f'no gradient reached {name}'
    model.zero_grad()


def test_the_view_tokens_change_the_output(tiny):
    """Same question and cloud, other views (other pixels, other depths): other next-token scores; the views
    reach the language model, they are not decoration."""
    model, proc = tiny
    logits = []
    for seed in (0, 1):
        v, d = _views(seed, 3)
        batch = proc(questions=QUESTIONS[:1], point_clouds=[_cloud(0)], views=[v], depths=[d])
        with torch.no_grad():
            logits.append(model(**batch).logits[0, -1])
    assert not torch.allclose(logits[0], logits[1], atol=1e-5)


def test_overfits_a_small_batch_then_generates_the_targets_exactly():
    model, proc = build_tiny_model_and_processor(with_views=False, num_points=256, seed=1)
    clouds = [_cloud(1, 400), _cloud(2, 400)]
    batch = proc(questions=QUESTIONS, point_clouds=clouds, targets=TARGETS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(120):
        loss = model(**batch).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02 * first:
            break
    assert loss.item() <= 0.1 * first, (first, loss.item())
    model.eval()
    gen = proc(questions=QUESTIONS, point_clouds=clouds)
    out = model.generate(**gen, max_new_tokens=96, do_sample=False)
    texts = proc.batch_decode(out[:, gen['input_ids'].shape[1]:])
    for text, target in zip(texts, TARGETS):
        assert text.strip() == target
        assert parse_completion(text).format_valid


def test_save_load_round_trip_gives_identical_logits(tiny, tmp_path):
    model, proc = tiny
    model.eval()
    v, d = _views(3, 2)
    batch = proc(questions=QUESTIONS[:1], point_clouds=[_cloud(3)], views=[v], depths=[d])
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    assert (tmp_path / 'model.safetensors').exists() and not list(tmp_path.glob('*.bin'))
    loaded = R3DForConditionalGeneration.from_pretrained(tmp_path).eval()
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), R3DConfig) and isinstance(auto, R3DForConditionalGeneration)
    proc2 = R3DProcessor.from_pretrained(tmp_path)
    batch2 = proc2(questions=QUESTIONS[:1], point_clouds=[_cloud(3)], views=[v], depths=[d])
    with torch.no_grad():
        a, b = model(**batch).logits, loaded(**batch2).logits
    assert torch.equal(a, b)
    half = R3DForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert half.point_encoder.position[0].weight.dtype == torch.float32  # metres keep their precision
    assert half.language_model.lm_head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert half(**batch2).logits.dtype == torch.bfloat16


def test_padded_batch_equals_one_by_one(tiny):
    model, proc = tiny
    model.eval()
    qs = ['Where is the chair?', 'How many lamps are there in this room and where are they?']
    clouds = [_cloud(4), _cloud(5, 900)]
    views = [_views(4, 1), _views(5, 3)]
    batch = proc(questions=qs, point_clouds=clouds, views=[v for v, _ in views], depths=[d for _, d in views])
    with torch.no_grad():
        together = model(**batch).logits
        for i in range(2):
            single = proc(questions=[qs[i]], point_clouds=[clouds[i]], views=[views[i][0]], depths=[views[i][1]])
            alone = model(**single).logits[0]
            mask = batch['attention_mask'][i].bool()
            torch.testing.assert_close(together[i][mask], alone, atol=1e-4, rtol=1e-4)
    # greedy decoding through GenerationMixin (KV cache, left padding) agrees as well
    width = batch['input_ids'].shape[1]
    generated = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)[:, width:]
    for i in range(2):
        single = proc(questions=[qs[i]], point_clouds=[clouds[i]], views=[views[i][0]], depths=[views[i][1]])
        alone = model.generate(**single, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert torch.equal(alone[0, single['input_ids'].shape[1]:], generated[i])


def test_paper_size_config_on_meta_device_reports_lora_counts():
    cfg = paper_config()
    with torch.device('meta'):
        model = R3DForConditionalGeneration(cfg)
        counts = count_parameters(apply_lora(model))
    # LoRA r=12 on q,k,v,o,gate,up,down of the last 8 of 28 blocks of a Qwen2.5-7B-shaped backbone
    per_block = 12 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + (3584 + 18944) * 3)
    assert counts['lora'] == 8 * per_block == 8_650_752
    assert 7.0e9 < counts['total'] < 8.5e9
    assert counts['lora'] < counts['trainable'] < 0.1 * counts['total']
    with torch.device('meta'):
        frozen_tower = count_parameters(apply_lora(R3DForConditionalGeneration(cfg), train_vision_tower=False))
    assert frozen_tower['lora'] == counts['lora'] and frozen_tower['trainable'] < counts['trainable']
    print(f"\npaper-size: total {counts['total'] / 1e9:.2f}B, trainable {counts['trainable'] / 1e6:.1f}M, "
          f"LoRA {counts['lora'] / 1e6:.2f}M; with the view tower frozen: trainable "
          f"{frozen_tower['trainable'] / 1e6:.1f}M (the paper states ~12M LoRA, ~142M trainable)")


def test_lora_on_the_tiny_model_trains_only_adapters_encoders_and_projectors():
    model, proc = build_tiny_model_and_processor(seed=2)
    layers = model.config.text_config.num_hidden_layers  # 4 < 8: every block gets LoRA
    peft_model = apply_lora(model)
    counts = count_parameters(peft_model)
    per_block = 12 * ((128 + 128) * 2 + (128 + 64) * 2 + (128 + 256) * 3)
    assert counts['lora'] == layers * per_block
    v, d = _views(11, 2)
    batch = proc(questions=QUESTIONS[:1], point_clouds=[_cloud(11)], views=[v], depths=[d], targets=TARGETS[:1])
    peft_model(**batch).loss.backward()
    for name, p in peft_model.named_parameters():
        trainable = 'lora_' in name or any(m in name for m in ('point_encoder', 'scene_projector', 'vision_tower',
                                                               'view_projector', 'depth_encoder'))
        assert p.requires_grad == trainable, name
        assert (p.grad is not None) == trainable, name
    gen = proc(questions=QUESTIONS[:1], point_clouds=[_cloud(11)], views=[v], depths=[d])
    out = peft_model.generate(**gen, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= gen['input_ids'].shape[1] + 4 and torch.equal(out[:, :gen['input_ids'].shape[1]],
                                                                         gen['input_ids'])


def test_local_qwen2_checkpoint_loads_as_the_backbone(tmp_path):
    tok = tiny_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(7)
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / 'qwen2_tiny')
    ref = Qwen2ForCausalLM.from_pretrained(tmp_path / 'qwen2_tiny')
    model = R3DForConditionalGeneration.from_backbone(tmp_path / 'qwen2_tiny', num_scene_tokens=4,
                                                      point_hidden_size=32, **{
                                                          'scene_token_id': tok.convert_tokens_to_ids('<scene>')})
    for (n, a), b in zip(ref.state_dict().items(), model.language_model.state_dict().values()):
        assert torch.equal(a, b), n
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits)


QWEN_STYLE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _qwen_style_tokenizer():
    """A word-level stand-in for a Qwen tokenizer: its own chat template and <|im_end|> eos, no R3D tokens."""
    words = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '[UNK]', 'system', 'user', 'assistant', 'where', 'is',
             'the', 'chair', '?']
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='[UNK]'))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token='<|im_end|>', unk_token='[UNK]',
                                   additional_special_tokens=['<|im_start|>', '<|endoftext|>'])
    fast.chat_template = QWEN_STYLE_TEMPLATE
    return fast


@pytest.mark.parametrize('dual_encoder', [False, True])
def test_backbone_tokenizer_and_vision_tower_from_local_paths(tmp_path, dual_encoder):
    tok = _qwen_style_tokenizer()
    base_vocab = len(tok)
    torch.manual_seed(3)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=base_vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / 'lm')
    vision_cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=32, patch_size=16)
    if dual_encoder:  # a full SigLIP checkpoint: only its vision half is used
        vision = SiglipModel(SiglipConfig(text_config={'hidden_size': 32, 'intermediate_size': 64,
                                                       'num_hidden_layers': 1, 'num_attention_heads': 2,
                                                       'vocab_size': 50}, vision_config=vision_cfg.to_dict()))
    else:
        vision = SiglipVisionModel(vision_cfg)
    vision.save_pretrained(tmp_path / 'vision')
    tok.save_pretrained(tmp_path / 'lm')
    model, proc = build_from_local_paths(tmp_path / 'lm', tmp_path / 'vision', image_size=32, num_scene_tokens=4,
                                         point_hidden_size=32, num_view_tokens=2, num_points=128)
    model.eval()
    tok = proc.tokenizer
    # markers and placeholders became single special tokens; embeddings grew to match
    assert len(tok) > base_vocab and model.get_input_embeddings().num_embeddings == len(tok)
    assert model.config.scene_token_id == tok.convert_tokens_to_ids('<scene>') >= base_vocab
    assert model.config.text_config.eos_token_id == tok.convert_tokens_to_ids('<|im_end|>')
    src = vision.vision_model if dual_encoder else vision
    for name, weight in src.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[name], weight), name
    text = proc.prompt('where is the chair ?', num_views=1)
    assert text.startswith('<|im_start|>system\n') and text.endswith('<|im_start|>assistant\n')
    v, d = _views(9, 1)
    batch = proc(questions=['where is the chair ?'], point_clouds=[_cloud(9, 300)], views=[v], depths=[d],
                 targets=['<think>the chair</think><answer>chair</answer>'])
    assert (batch['input_ids'] == model.config.scene_token_id).sum() == 4
    assert (batch['input_ids'] == model.config.view_token_id).sum() == 2
    assert batch['labels'][0, -1] == tok.eos_token_id
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.logits.shape[-1] == len(tok)


def test_siglip2_view_tower_takes_patches_and_trains():
    model, proc = build_tiny_model_and_processor(seed=4)
    cfg = model.config
    cfg.vision_config = Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, patch_size=16, num_patches=16)
    torch.manual_seed(4)
    model = R3DForConditionalGeneration(cfg)
    v, d = _views(12, 2)
    batch = proc(questions=QUESTIONS[:1], point_clouds=[_cloud(12)], views=[v], depths=[d], targets=TARGETS[:1])
    out = model(**batch)
    out.loss.backward()
    assert type(model.vision_tower).__name__ == 'Siglip2VisionModel'
    from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

    pixels = batch['view_pixel_values'][0]
    patches = model._vision_inputs(pixels)['pixel_values']
    for i in range(len(pixels)):  # the layout SigLIP-2 was trained with
        assert np.array_equal(patches[i].numpy(), convert_image_to_patches(pixels[i].numpy(), 16))
    assert model.vision_tower.embeddings.patch_embedding.weight.grad is not None


def test_points_with_normals_and_colour_scales():
    from r3d_ros.model.processing_r3d import sample_points

    rng = np.random.default_rng(13)
    xyz = rng.uniform(-3, 3, (300, 3)).astype(np.float32)
    rgb255 = rng.integers(0, 256, (300, 3)).astype(np.float32)
    normals = rng.normal(size=(300, 3)).astype(np.float32)
    out = sample_points(np.concatenate([xyz, rgb255, normals], 1), 200, features=6)
    assert out.shape == (200, 9) and out[:, 3:6].max() <= 1.0 and out[:, 6:].min() < -0.5  # normals untouched
    assert set(map(tuple, out[:, :3].round(5))) <= set(map(tuple, xyz.round(5)))  # metres kept, no normalising
    xyz_only = sample_points(xyz, 500)  # fewer points than asked: repeats; missing colour: grey
    assert xyz_only.shape == (500, 6) and np.all(xyz_only[:, 3:] == 0.5)
    model, _ = build_tiny_model_and_processor(with_views=False, num_points=128, seed=5)
    cfg = model.config
    cfg.point_feature_dim = 6
    model = R3DForConditionalGeneration(cfg)
    proc = R3DProcessor(tiny_tokenizer(), num_points=128, num_scene_tokens=cfg.num_scene_tokens, point_features=6)
    batch = proc(questions=QUESTIONS[:1], point_clouds=[np.concatenate([xyz, rgb255, normals], 1)],
                 targets=TARGETS[:1])
    assert batch['point_clouds'].shape == (1, 128, 9)
    model(**batch).loss.backward()
    assert model.point_encoder.local[0].weight.grad[:, 6:].abs().sum() > 0  # normals reach the encoder


def test_scene_tokens_keep_absolute_map_position(tiny):
    """Boxes come out in map-frame metres, so the same room 2 m further along x must encode differently."""
    model, proc = tiny
    cloud = _cloud(14, 600)
    moved = cloud.copy()
    moved[:, 0] += 2.0
    with torch.no_grad():
        a = model.point_encoder(proc(questions=['q'], point_clouds=[cloud])['point_clouds'])
        b = model.point_encoder(proc(questions=['q'], point_clouds=[moved])['point_clouds'])
    assert proc(questions=['q'], point_clouds=[moved])['point_clouds'][0, :, 0].min() >= 2.0  # not re-centred
    assert (a - b).abs().mean() > 0.05 * a.abs().mean()
