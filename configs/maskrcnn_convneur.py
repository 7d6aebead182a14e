# Mask R-CNN + FPN, 1x schedule on COCO, ConvNeur-M2 (paper: 41.2 box AP / 36.4 mask AP).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)

from convneur_mm.models import arch_channels

arch = 'm2'
# An ImageNet-pretrained ConvNeur classifier checkpoint (mmpretrain format), or None.
pretrained = None

model = dict(
    backbone=dict(
        _delete_=True,
        type='convneur_mm.ConvNeur',
        arch=arch,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        # The paper's detection memory settings: larger chunks, smaller inner steps.
        chunk_size=4096,
        max_lr=1e-3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')
        if pretrained else None),
    neck=dict(in_channels=arch_channels(arch)))

# AdamW as in the Swin-T / ConvNeXt-T Mask R-CNN 1x recipes; no decay on norms and biases.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0, flat_decay_mult=0.0))
