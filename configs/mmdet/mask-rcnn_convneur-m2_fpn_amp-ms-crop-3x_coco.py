# Mask R-CNN + FPN, 3x (36 epochs) with DETR-style multi-scale crop training, ConvNeur-M2.
# Recipe: mmdet's Swin-T / ConvNeXt-T ms-crop 3x (AdamW 1e-4, wd 0.05, AMP, layer-wise lr decay).
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']
custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(backbone=backbone_cfg('m2', 'dense'), neck=dict(in_channels=arch_channels('m2')))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # ConvNeXt-T uses 0.95 per "layer" of 6; ours decays per block, so 0.95 over 14-18 blocks.
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.95, flat_decay_mult=0.0))

# Random generator states go into checkpoints, so a resumed run continues exactly.
custom_hooks = [dict(type='convneur_mm.RNGStateHook'),
                dict(type='convneur_mm.MemoryStatsHook', interval=500)]
