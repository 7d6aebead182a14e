# Mask R-CNN 1x on COCO with an ImageNet-pretrained ResNet-50 whose Bottlenecks of stages c3-c5 end
# with a neural-memory gate (convneur_mm.MemoryGate, the identity at initialisation): mmdet's
# GCNet (gcnet/mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco.py) and Non-local configs put their
# plug-ins at the same place.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['convneur_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(plugins=[
        dict(cfg=dict(type='convneur_mm.MemoryGate'), stages=(False, True, True, True),
             position='after_conv3')
    ]))
