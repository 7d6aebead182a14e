# UperNet, 160k on ADE20K with ConvNeur-M3.
_base_ = ['./upernet_convneur-m4_8xb2-amp-160k_ade20k-512x512.py']

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(
    backbone=backbone_cfg('m3', 'dense'),
    decode_head=dict(in_channels=arch_channels('m3')),
    auxiliary_head=dict(in_channels=arch_channels('m3')[2]))
