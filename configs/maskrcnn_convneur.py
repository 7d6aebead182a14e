# The main configuration: Mask R-CNN 1x on COCO with ConvNeur-M2, the paper's 41.2 / 36.4 setting.
#   python tools/train.py configs/maskrcnn_convneur.py
_base_ = ['./mmdet/mask-rcnn_convneur-m2_fpn_1x_coco.py']
