# Semantic FPN, 40k iterations on ADE20K (512x512 crops, batch 8x4) with ConvNeur-M2.
# Paper: 39.17 mIoU. Recipe: the PVT / PoolFormer protocol as in mmseg's PoolFormer config
# (AdamW 2e-4, wd 1e-4, poly 0.9, AMP).
_base_ = ['mmseg::poolformer/fpn_poolformer_s12_8xb4-40k_ade20k-512x512.py']
custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(backbone=backbone_cfg('m2', 'dense'), neck=dict(in_channels=arch_channels('m2')))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0, flat_decay_mult=0.0))

# Random generator states go into checkpoints, so a resumed run continues exactly.
custom_hooks = [dict(type='convneur_mm.RNGStateHook'),
                dict(type='convneur_mm.MemoryStatsHook', interval=500)]
