# Semantic FPN, 40k on ADE20K with ConvNeur-M3.
_base_ = ['./fpn_convneur-m2_8xb4-40k_ade20k-512x512.py']

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(backbone=backbone_cfg('m3', 'dense'), neck=dict(in_channels=arch_channels('m3')))
