"""Stage 1: supervised fine-tuning on chain-of-thought records (the paper's cold start), on trl's SFTTrainer.

The model sees ``system prompt + <scene> tokens + question`` and learns the whole
``<think>…</think><answer>…</answer>`` completion; the loss is on completion tokens only (the R3D
processor masks the prompt). Batches are built by :class:`training.data.SceneCollator` because the point
cloud travels with each sample; trl's own dataset preparation is skipped for that reason.
"""

from __future__ import annotations

from pathlib import Path

from training.config import last_checkpoint, make_log_callback, make_processor_saver
from training.data import SceneClouds, SceneCollator, SceneViews, load_records, sft_rows, split_path, to_dataset
from training.modeling import load_model_and_processor, save_model

#: trl/transformers arguments this pipeline relies on, whatever the YAML says
_FORCED = {'remove_unused_columns': False, 'dataset_kwargs': {'skip_prepare_dataset': True}}


def build_sft_trainer(cfg: dict, output_dir: str | Path):
    import torch
    from trl import SFTConfig, SFTTrainer

    output_dir = Path(output_dir)
    torch.manual_seed(int(cfg.get('seed', 0)))
    model, processor = load_model_and_processor(cfg.get('model', {}))
    data = cfg['data']
    tasks = data.get('tasks')
    train = load_records(split_path(data['dir'], 'train'), data.get('max_train'), tasks)
    if data.get('paraphrase'):  # a share of the questions in training wordings (r3d_ros/scenes/paraphrase.py)
        from r3d_ros.scenes.paraphrase import paraphrase_records

        train, _ = paraphrase_records(train, cfg.get('model', {}).get('seed', 0), train=True,
                                      share=float(data['paraphrase']))
    if data.get('answer_shapes'):  # the sentences the model learns to write, kept for decoding (answer_shapes)
        from r3d_ros.answer_shapes import shapes_of

        processor.answer_shapes = shapes_of(((r.question, r.cot) for r in train), processor.class_names)
    val_path = split_path(data['dir'], 'val')
    val = load_records(val_path, data.get('max_eval'), tasks) if val_path.exists() and data.get('max_eval') else None
    clouds = SceneClouds(data['dir'], data.get('max_points', 8192), segment=processor.num_object_tokens > 0)
    views = None
    if data.get('views'):  # 'selected' | 'ring': rendered views for the view tower (training.data.SceneViews)
        if not getattr(model.config, 'use_views', False):
            raise ValueError("data.views needs a model with a view tower (model.with_views: true)")
        views = SceneViews(data['dir'], data['views'], int(data.get('num_views', 6)), processor.image_size)
        for split in ('train', 'val'):
            views.load(split)   # built beforehand by `r3d-train views`; a question not in them is rendered now
    args = SFTConfig(output_dir=str(output_dir), report_to='none', **{**cfg.get('train', {}), **_FORCED})
    class SceneSFTTrainer(SFTTrainer):
        """trl's SFTTrainer + the object-class loss of models with an object-class head (set by the model's
        forward when the batch's scenes carry class targets; see ``R3DForConditionalGeneration.embed``) and the
        slot-matching loss of models with a slot pointer (its scores against the labelled ``<obj_k>``)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            loss = result[0] if return_outputs else result
            mode = 'train' if model.training else 'eval'
            # the LM loss is already divided over the accumulation steps (num_items_in_batch): auxiliary losses match it
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            base = self.accelerator.unwrap_model(model)
            base = base.get_base_model() if hasattr(base, 'get_base_model') else base
            aux = getattr(base, 'object_class_loss', None)
            if aux is not None:
                base.object_class_loss = None
                self._metrics[mode]['object_class_loss'].append(float(aux.detach()))
                loss = loss + base.config.object_class_loss_weight * aux / steps
            scores = getattr(base, 'object_pointer_scores', None)
            if scores is not None and 'labels' in inputs:
                base.object_pointer_scores = None
                from r3d_ros.model.modeling_r3d import slot_pointer_loss

                aux, counts = slot_pointer_loss(scores, inputs['labels'], base.config.object_ref_token_ids)
                if counts['positions']:
                    self._metrics[mode]['object_pointer_loss'].append(float(aux.detach()))
                    self._metrics[mode]['object_pointer_acc'].append(counts['right'] / counts['positions'])
                loss = loss + aux / steps
            return (loss, *result[1:]) if return_outputs else loss

    trainer = SceneSFTTrainer(model=model, args=args, train_dataset=to_dataset(sft_rows(train)),
                         eval_dataset=to_dataset(sft_rows(val)) if val else None,
                         processing_class=processor.tokenizer,
                         data_collator=SceneCollator(processor, clouds, data.get('max_length'), views),
                         callbacks=[make_log_callback(output_dir / 'log.jsonl'), make_processor_saver(processor)])
    return trainer, processor


def run_sft(cfg: dict, output_dir: str | Path, resume: bool = False) -> Path:
    """Train, then save the final model (+ processor) to ``output_dir/final``; returns that path."""
    trainer, processor = build_sft_trainer(cfg, output_dir)
    checkpoint = last_checkpoint(output_dir) if resume else None
    trainer.train(resume_from_checkpoint=checkpoint)
    final = Path(output_dir) / 'final'
    if trainer.accelerator.is_main_process:
        save_model(trainer.accelerator.unwrap_model(trainer.model), processor, final)
    trainer.accelerator.wait_for_everyone()
    return final
