# UperNet 160k on ADE20K with ImageNet-pretrained ConvNeXt-T, each of its four stages followed by a
# neural-memory gate (convneur_mm.MemoryGated; the identity at initialisation). Otherwise mmseg's
# convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py.
_base_ = ['mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py']
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

# mmseg's LearningRateDecayOptimizerConstructor accepts a bare ConvNeXt only; ours asks the
# wrapper (which asks ConvNeXt) for each parameter's depth: layer-wise, where the base decays
# stage-wise.
optim_wrapper = dict(
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.9))
