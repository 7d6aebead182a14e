# Demo: ConvNeur-M1 classifier trained from scratch on a Fashion-MNIST subset (600 images per class
# for training, 100 per class from the test set for validation; python tools/prepare_data.py),
# at 32x32, evaluated with top-1 accuracy. About 2 minutes on 2 CPU cores.
_base_ = ['mmpretrain::_base_/models/resnet18.py', 'mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)

from convneur_mm.presets import arch_channels, backbone_cfg, gray_classification_pipelines

data_root = 'data/fashion_mnist/'
image_size = 32
max_epochs = 8

model = dict(
    backbone=backbone_cfg('m1', 'classification', drop_path_rate=0.0),
    neck=None,  # the backbone pools (gap_before_final_norm)
    head=dict(num_classes=10, in_channels=arch_channels('m1')[3],
              loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
              topk=(1,)))
data_preprocessor = dict(num_classes=10, mean=[72.9] * 3, std=[90.0] * 3)

train_pipeline, test_pipeline = gray_classification_pipelines(image_size, padding=3)
dataset = dict(type='CustomDataset', data_root=data_root, data_prefix='',
               classes=data_root + 'meta/classes.txt')
train_dataloader = dict(
    batch_size=64, num_workers=1, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(**dataset, ann_file='meta/train.txt', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=100, num_workers=1, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, ann_file='meta/val.txt', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator

train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_epochs),
    visualization=dict(type='VisualizationHook', enable=True, interval=200))

# Fixed seed: the demo numbers in the README are reproducible up to CPU floating-point noise.
randomness = dict(seed=0)

# Random generator states go into checkpoints, so a resumed run continues exactly.
custom_hooks = [dict(type='convneur_mm.RNGStateHook'),
                dict(type='convneur_mm.MemoryStatsHook', interval=50)]
