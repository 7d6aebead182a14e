# Fine-tuning of the scenes protocol with a peer that has pre-trained weights: the scenes' Mask
# R-CNN on ResNet-18, initialised from its 60k-image classifier, with a neural-memory gate after
# its last three stages (convneur_mm.MemoryGated; the identity at initialisation, so fine-tuning
# starts from exactly the pre-trained network). This is the `resnet18 memory-gate` run of
#     python tools/compare_real.py --tasks scenes-det-ft
# which also trains the classifier (work_dirs/compare_real/scenes-cls/resnet18/seed0/) first.
_base_ = ['./mask-rcnn_convneur-m1_fpn_scenes.py']

pretrain_config = ('tools/compare_real.py --tasks scenes-cls --runs resnet18 --seeds 0 '
                   '(it writes backbone.pth)')
from convneur_mm.presets import ONE_RECIPE_OPTIM, gated_peer

model = dict(
    # mmdet's ResNet, trained whole: BatchNorm neither frozen nor in eval mode, as in the scenes
    # tables' from-scratch runs. GCNet instead, at the same places: gated_peer(..., 'gcnet')
    backbone=gated_peer(
        dict(type='ResNet', depth=18, frozen_stages=-1, norm_eval=False,
             init_cfg=dict(type='Pretrained', checkpoint='work_dirs/compare_real/'
                           'scenes-cls/resnet18/seed0/backbone.pth')),
        'resnet18'),
    neck=dict(in_channels=[64, 128, 256, 512]))
optim_wrapper = ONE_RECIPE_OPTIM  # one recipe for every backbone of the scenes tables
