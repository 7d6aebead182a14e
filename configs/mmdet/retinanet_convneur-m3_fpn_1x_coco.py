# RetinaNet + FPN, 1x on COCO with ConvNeur-M3.
_base_ = ['./retinanet_convneur-m2_fpn_1x_coco.py']

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(backbone=backbone_cfg('m3', 'dense', out_indices=(1, 2, 3)),
             neck=dict(in_channels=arch_channels('m3', (1, 2, 3))))
