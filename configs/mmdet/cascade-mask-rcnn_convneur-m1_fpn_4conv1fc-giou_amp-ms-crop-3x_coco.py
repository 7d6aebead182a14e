# Cascade Mask R-CNN 3x on COCO with ConvNeur-M1.
_base_ = ['./cascade-mask-rcnn_convneur-m2_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py']

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(backbone=backbone_cfg('m1', 'dense'), neck=dict(in_channels=arch_channels('m1')))
