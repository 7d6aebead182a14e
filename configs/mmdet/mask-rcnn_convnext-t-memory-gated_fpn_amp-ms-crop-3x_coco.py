# Mask R-CNN 3x on COCO with ImageNet-pretrained ConvNeXt-T, each of its four stages followed by a
# neural-memory gate (convneur_mm.MemoryGated; the gates are the identity at initialisation, so the
# pretrained backbone starts unchanged). Otherwise mmdet's
# convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py.
_base_ = ['mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py']
custom_imports = dict(imports=['convneur_mm', 'mmpretrain.models'], allow_failed_imports=False)

checkpoint_file = 'https://download.openmmlab.com/mmclassification/v0/convnext/downstream/convnext-tiny_3rdparty_32xb128-noema_in1k_20220301-795e9634.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='convneur_mm.MemoryGated',
        backbone=dict(
            type='mmpretrain.ConvNeXt', arch='tiny', out_indices=[0, 1, 2, 3],
            drop_path_rate=0.4, layer_scale_init_value=1.0, gap_before_final_norm=False,
            init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file, prefix='backbone.')),
        after=['stages.0', 'stages.1', 'stages.2', 'stages.3']))

# mmdet's LearningRateDecayOptimizerConstructor accepts a bare ConvNeXt only; ours asks the
# backbone (here the wrapper, which asks ConvNeXt) for each parameter's depth.
optim_wrapper = dict(
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.95))
