# ConvNeur-M4 on ImageNet-1K, 300 epochs, DeiT-style recipe. Paper: 81.5 top-1.
_base_ = ['./convneur-m2_8xb128_in1k.py']

from convneur_mm.presets import arch_channels, backbone_cfg

model = dict(backbone=backbone_cfg('m4', 'classification'),
             head=dict(in_channels=arch_channels('m4')[3]))
