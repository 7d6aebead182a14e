# Mask R-CNN + FPN, 3x multi-scale crop on COCO with ConvNeur-M3.
_base_ = ['./mask-rcnn_convneur-m2_fpn_amp-ms-crop-3x_coco.py']

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(backbone=backbone_cfg('m3', 'dense'), neck=dict(in_channels=arch_channels('m3')))
