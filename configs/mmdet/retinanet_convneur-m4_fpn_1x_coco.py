# RetinaNet + FPN, 1x on COCO with ConvNeur-M4.
_base_ = ['./retinanet_convneur-m2_fpn_1x_coco.py']

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(backbone=backbone_cfg('m4', 'dense', out_indices=(1, 2, 3)),
             neck=dict(in_channels=arch_channels('m4', (1, 2, 3))))
