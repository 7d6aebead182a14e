# ConvNeur-M2 on ImageNet-1K: 300 epochs at 224x224, DeiT-style augmentation (RandAugment,
# random erasing, Mixup 0.8, CutMix 1.0, label smoothing 0.1), batch 8x128 = 1024, AdamW
# (lr 1e-3, wd 0.05, 20-epoch warm-up, cosine), gradient clipping 5.0. Paper: 77.6 top-1.
_base_ = ['mmpretrain::deit/deit-tiny_4xb256_in1k.py']
custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(
    backbone=backbone_cfg('m2', 'classification'),
    head=dict(_delete_=True, type='LinearClsHead', num_classes=1000,
              in_channels=arch_channels('m2')[3],
              loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')),
    init_cfg=None)  # the backbone initialises itself (TruncNormal); the head keeps its default

train_dataloader = dict(batch_size=128)
optim_wrapper = dict(
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    # no weight decay on norms, biases and layer scales; no layer-wise decay in pre-training
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=1.0, flat_decay_mult=0.0))

# Random generator states go into checkpoints, so a resumed run continues exactly.
custom_hooks = [dict(type='convneur_mm.RNGStateHook'),
                dict(type='convneur_mm.MemoryStatsHook', interval=500)]
