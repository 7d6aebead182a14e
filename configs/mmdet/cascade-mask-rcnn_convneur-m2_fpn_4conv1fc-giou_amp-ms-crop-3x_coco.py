# Cascade Mask R-CNN + FPN (4conv1fc heads, GIoU), 3x multi-scale crop, AMP, ConvNeur-M2.
# Recipe: mmdet's ConvNeXt-T cascade 3x (AdamW 2e-4, wd 0.05, layer-wise lr decay).
_base_ = ['mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py']
custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(backbone=backbone_cfg('m2', 'dense'), neck=dict(in_channels=arch_channels('m2')))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9, flat_decay_mult=0.0))

# Random generator states go into checkpoints, so a resumed run continues exactly.
custom_hooks = [dict(type='convneur_mm.RNGStateHook'),
                dict(type='convneur_mm.MemoryStatsHook', interval=500)]
