# The from-scratch recipe for Semantic FPN + ConvNeur-M1 on Fashion-MNIST scenes: ConvNeXt's 4x4
# patchify stem, as in mask-rcnn_convneur-m1-patchify_fpn_scenes.py (the choice was made on
# detection's validation scenes; in segmentation from scratch every seed moved up, not separated:
# docs/benchmarks.md, "ConvNeXt's stem in segmentation from scratch"). From scratch only.
_base_ = ['./fpn_convneur-m1_scenes-seg.py']

model = dict(backbone=dict(stem='patchify'))
