# Mask R-CNN + FPN, 1x (12 epochs, single scale) on COCO with ConvNeur-M2.
# Paper: 41.2 box AP / 36.4 mask AP. Recipe: mmdet's Swin-T 1x (AdamW 1e-4, wd 0.05, warm-up 1000 it).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(backbone=backbone_cfg('m2', 'dense'), neck=dict(in_channels=arch_channels('m2')))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # no weight decay on norms and biases; layer-wise lr decay off (1.0) as in the Swin 1x recipe
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0, flat_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]

# Random generator states go into checkpoints, so a resumed run continues exactly.
custom_hooks = [dict(type='convneur_mm.RNGStateHook'),
                dict(type='convneur_mm.MemoryStatsHook', interval=500)]
