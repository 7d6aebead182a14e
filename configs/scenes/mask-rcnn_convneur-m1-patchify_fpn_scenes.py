# The from-scratch recipe for Mask R-CNN + ConvNeur-M1 on Fashion-MNIST scenes: the scenes config
# with ConvNeXt's 4x4 patchify stem instead of the presets' two 3x3 convolutions (the paper
# describes no stem). Chosen on the validation scenes, where from scratch it lifted M1 by 8.3 box
# and 9.5 mask mAP to the level of ConvNeXt-V2-atto (docs/benchmarks.md, "ConvNeXt's stem in the
# whole M1"). For training from scratch only: a checkpoint of the presets' stem does not load
# into it, and in pre-training it was no better (same page, "ConvNeXt's stem in pre-training").
_base_ = ['./mask-rcnn_convneur-m1_fpn_scenes.py']

model = dict(backbone=dict(stem='patchify'))
