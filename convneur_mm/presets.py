"""Per-preset settings used by the configs, kept in one place.

Configs import these (``from convneur_mm.presets import arch_channels, backbone_cfg``) so that
switching the preset is a one-word change that also fixes the neck's channels.
"""
from .models import ConvNeur

# Stochastic depth per preset: classification follows DeiT-T / ConvNeXt-atto-sized models,
# dense prediction the Swin-T / ConvNeXt-T downstream recipes scaled down with model size.
DROP_PATH = {
    'classification': dict(m1=0.05, m2=0.1, m3=0.1, m4=0.2),
    'dense': dict(m1=0.1, m2=0.1, m3=0.2, m4=0.3),
}


def arch_channels(arch, out_indices=(0, 1, 2, 3)):
    """Channels of a preset's stage outputs, e.g. for a neck's ``in_channels``."""
    widths = ConvNeur.parse_arch(arch)['widths']
    return [widths[i] for i in out_indices]


def pretrained_checkpoint(arch):
    """Where ``tools/train.py configs/mmpretrain/convneur-<arch>_8xb128_in1k.py`` ends."""
    return f'work_dirs/convneur-{arch}_8xb128_in1k/epoch_300.pth'


def backbone_cfg(arch, task, **overrides):
    """The ``model.backbone`` dict of a config (it replaces the base's backbone).

    Args:
        arch (str): ``'m1'``..``'m4'``.
        task (str): ``'classification'`` (224x224 ImageNet: the preset's memory settings,
            pooled output) or ``'dense'`` (detection/segmentation: the paper's detection memory
            settings, chunk 4096 and inner step 1e-3, all four maps, ImageNet-pretrained init).
        **overrides: any other ConvNeur argument.
    """
    if task not in DROP_PATH:
        raise ValueError(f'task={task!r}; expected one of {sorted(DROP_PATH)}')
    cfg = dict(_delete_=True, type='convneur_mm.ConvNeur', arch=arch,
               drop_path_rate=DROP_PATH[task][arch])
    if task == 'classification':
        cfg.update(out_indices=(3,), gap_before_final_norm=True)
    else:
        cfg.update(out_indices=(0, 1, 2, 3), chunk_size=4096, max_lr=1e-3,
                   init_cfg=dict(type='Pretrained', checkpoint=pretrained_checkpoint(arch),
                                 prefix='backbone.'))
    cfg.update(overrides)
    return cfg


# mmpretrain's ImageNet-1K ConvNeXt-T, the checkpoint mmdet's and mmseg's ConvNeXt-T configs load.
CONVNEXT_T_IN1K = ('https://download.openmmlab.com/mmclassification/v0/convnext/downstream/'
                   'convnext-tiny_3rdparty_32xb128-noema_in1k_20220301-795e9634.pth')


def memory_gated_convnext_t(drop_path_rate=0.4, **gate):
    """The ``model.backbone`` dict of a config: ImageNet-pretrained ConvNeXt-T (as mmdet's and
    mmseg's ConvNeXt-T configs build it) with a memory gate after each of its four stages."""
    return dict(
        _delete_=True, type='convneur_mm.MemoryGated', gate=gate,
        backbone=dict(type='mmpretrain.ConvNeXt', arch='tiny', out_indices=[0, 1, 2, 3],
                      drop_path_rate=drop_path_rate, layer_scale_init_value=1.0,
                      gap_before_final_norm=False,
                      init_cfg=dict(type='Pretrained', checkpoint=CONVNEXT_T_IN1K,
                                    prefix='backbone.')),
        after=['stages.0', 'stages.1', 'stages.2', 'stages.3'])


def gray_classification_pipelines(image_size, padding):
    """(train, test) mmpretrain pipelines of the Fashion-MNIST classifiers (demo and scenes
    pre-training): resize to ``image_size``, and for training a padded random crop and a flip."""
    resize = dict(type='Resize', scale=(image_size, image_size))
    train = [dict(type='LoadImageFromFile'), resize,
             dict(type='RandomCrop', crop_size=image_size, padding=padding),
             dict(type='RandomFlip', prob=0.5, direction='horizontal'), dict(type='PackInputs')]
    test = [dict(type='LoadImageFromFile'), dict(resize), dict(type='PackInputs')]
    return train, test


# ConvNeXt-V2 as mmpretrain's ConvNeXt builds it (with ``arch='atto'``, ``'femto'``, ...): global
# response normalisation and no layer scale. The peer of every comparison tool.
CONVNEXTV2 = dict(use_grn=True, layer_scale_init_value=0.)

# Global branches compared on pre-trained peers (tools/compare_real.py fine-tunes them,
# tools/benchmark.py times them): each after stages 2-4, the c3-c5 placement of mmdet's GCNet
# configs, and each the identity at initialisation. A ``MemoryGated`` ``gate`` argument per name.
C3_C5_PLACES = {'resnet18': ['layer2', 'layer3', 'layer4'],
                'convnextv2-atto': ['stages.1', 'stages.2', 'stages.3']}
GLOBAL_BRANCHES = {'memory-gate': dict(),  # MemoryGate's defaults (the dense settings)
                   'gcnet': dict(type='ContextBlock', ratio=1. / 16),
                   'nonlocal': dict(type='NonLocal2d')}
# One recipe for every backbone of the scenes tables: mmengine's default constructor (the
# layer-decay one needs get_layer_depth, which the peers lack), no weight decay on norms and biases.
ONE_RECIPE_OPTIM = dict(constructor='DefaultOptimWrapperConstructor',
                        paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))


def gated_peer(backbone, peer, branch='memory-gate'):
    """The ``model.backbone`` dict of a config: ``backbone`` (the peer's own dict) with a global
    branch of ``GLOBAL_BRANCHES`` after its stages 2-4, as tools/compare_real.py fine-tunes it."""
    return dict(_delete_=True, type='convneur_mm.MemoryGated', backbone=backbone,
                after=list(C3_C5_PLACES[peer]), gate=dict(GLOBAL_BRANCHES[branch]))
