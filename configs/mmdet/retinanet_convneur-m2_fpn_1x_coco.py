# RetinaNet + FPN, 1x on COCO with ConvNeur-M2. As in mmdet's Swin-T RetinaNet, only stages 2-4
# feed the FPN (out_indices=(1, 2, 3)), and stage 1 adds no unused output norm.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)

from convneur_mm.presets import arch_channels, backbone_cfg

out_indices = (1, 2, 3)
model = dict(
    backbone=backbone_cfg('m2', 'dense', out_indices=out_indices),
    neck=dict(in_channels=arch_channels('m2', out_indices), start_level=0, num_outs=5))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0, flat_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]

# Random generator states go into checkpoints, so a resumed run continues exactly.
custom_hooks = [dict(type='convneur_mm.RNGStateHook'),
                dict(type='convneur_mm.MemoryStatsHook', interval=500)]
