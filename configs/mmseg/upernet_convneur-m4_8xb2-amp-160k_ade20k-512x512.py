# UperNet, 160k iterations on ADE20K (512x512 crops, batch 8x2) with ConvNeur-M4.
# Paper: 45.72 mIoU. Recipe: mmseg's ConvNeXt-T UperNet (AdamW 1e-4, wd 0.05, AMP, warm-up 1500
# then poly, layer-wise lr decay, sliding-window test).
_base_ = ['mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py']
custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(
    backbone=backbone_cfg('m4', 'dense'),
    decode_head=dict(in_channels=arch_channels('m4')),
    auxiliary_head=dict(in_channels=arch_channels('m4')[2]))

optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.95, flat_decay_mult=0.0))

# Random generator states go into checkpoints, so a resumed run continues exactly.
custom_hooks = [dict(type='convneur_mm.RNGStateHook'),
                dict(type='convneur_mm.MemoryStatsHook', interval=500)]
