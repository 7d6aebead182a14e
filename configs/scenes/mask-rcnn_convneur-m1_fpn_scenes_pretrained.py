# Fine-tuning of the scenes protocol, the COCO step in miniature: the scenes' Mask R-CNN with its
# backbone initialised from the 60k-image classifier. Run that first:
#     python tools/train.py configs/scenes/convneur-m1_fashion-mnist-60k.py
_base_ = ['./mask-rcnn_convneur-m1_fpn_scenes.py']

pretrain_config = 'configs/scenes/convneur-m1_fashion-mnist-60k.py'
model = dict(backbone=dict(init_cfg=dict(
    _delete_=True, type='Pretrained', prefix='backbone.',
    checkpoint='work_dirs/convneur-m1_fashion-mnist-60k/epoch_2.pth')))
