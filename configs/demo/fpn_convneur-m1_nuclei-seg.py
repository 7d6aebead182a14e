# Demo: Semantic FPN + ConvNeur-M1 trained from scratch on the DSB2018 nuclei tiles as a
# two-class (background / nucleus) segmentation set (python tools/prepare_data.py), evaluated with
# mmseg's IoUMetric. About 2.5 minutes on 2 CPU cores.
_base_ = ['mmseg::_base_/models/fpn_r50.py', 'mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)

from convneur_mm.presets import arch_channels, backbone_cfg

data_root = 'data/nuclei/'
metainfo = dict(classes=('background', 'nucleus'), palette=[[0, 0, 0], [220, 20, 60]])
image_size = (256, 256)
max_iters = 400
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    pretrained=None,  # the ResNet base names an ImageNet checkpoint here
    data_preprocessor=dict(size=image_size),
    backbone=backbone_cfg('m1', 'dense', drop_path_rate=0.0, init_cfg=None),
    neck=dict(in_channels=arch_channels('m1'), out_channels=64),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=64, num_classes=2,
                     norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo,
               img_suffix='.png', seg_map_suffix='.png', reduce_zero_label=False)
train_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/train', seg_map_path='semantic/train')))
val_dataloader = dict(
    batch_size=1, num_workers=1, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/val', seg_map_path='semantic/val')))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=30, end=max_iters),
]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook', draw=True, interval=1))
log_processor = dict(by_epoch=False)

# Fixed seed: the demo numbers in the README are reproducible up to CPU floating-point noise.
randomness = dict(seed=0)

# Random generator states go into checkpoints, so a resumed run continues exactly.
custom_hooks = [dict(type='convneur_mm.RNGStateHook'),
                dict(type='convneur_mm.MemoryStatsHook', interval=50)]
