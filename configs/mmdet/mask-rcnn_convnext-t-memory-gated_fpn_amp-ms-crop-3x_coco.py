# Mask R-CNN 3x on COCO with ImageNet-pretrained ConvNeXt-T, each of its four stages followed by a
# neural-memory gate (convneur_mm.MemoryGated; the gates are the identity at initialisation, so the
# pretrained backbone starts unchanged). Otherwise mmdet's
# convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py.
_base_ = ['mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py']
custom_imports = dict(imports=['convneur_mm', 'mmpretrain.models'], allow_failed_imports=False)

from convneur_mm.presets import memory_gated_convnext_t

model = dict(backbone=memory_gated_convnext_t())

# mmdet's LearningRateDecayOptimizerConstructor accepts a bare ConvNeXt only; ours asks the
# backbone (here the wrapper, which asks ConvNeXt) for each parameter's depth.
optim_wrapper = dict(
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.95))
