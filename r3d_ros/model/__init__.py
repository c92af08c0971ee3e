"""The 3D-R1 model as a transformers model (config, model, processor), registered with the Auto classes."""

from transformers import AutoConfig, AutoModelForImageTextToText

from r3d_ros.model.configuration_r3d import R3DConfig
from r3d_ros.model.modeling_r3d import R3DForConditionalGeneration
from r3d_ros.model.processing_r3d import R3DProcessor

AutoConfig.register('r3d', R3DConfig, exist_ok=True)
AutoModelForImageTextToText.register(R3DConfig, R3DForConditionalGeneration, exist_ok=True)

__all__ = ['R3DConfig', 'R3DForConditionalGeneration', 'R3DProcessor']
