# UperNet 160k on ADE20K with ImageNet-pretrained ConvNeXt-T, each of its four stages followed by a
# neural-memory gate (convneur_mm.MemoryGated; the identity at initialisation). Otherwise mmseg's
# convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py.
_base_ = ['mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py']
custom_imports = dict(imports=['convneur_mm', 'mmpretrain.models'], allow_failed_imports=False)

from convneur_mm.presets import memory_gated_convnext_t

model = dict(backbone=memory_gated_convnext_t())

# mmseg's LearningRateDecayOptimizerConstructor accepts a bare ConvNeXt only; ours asks the
# wrapper (which asks ConvNeXt) for each parameter's depth: layer-wise, where the base decays
# stage-wise.
optim_wrapper = dict(
    constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, layer_decay_rate=0.9))
