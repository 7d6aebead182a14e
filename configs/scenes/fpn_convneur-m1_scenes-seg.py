# Semantic FPN + ConvNeur-M1 from scratch on Fashion-MNIST scenes (python tools/prepare_data.py):
# background + 10 classes; validation and test scenes use photographs never seen in training.
# The recipe is the nuclei demo's.
_base_ = ['../demo/fpn_convneur-m1_nuclei-seg.py']

data_root = 'data/fashion_scenes/'
metainfo = dict(
    classes=('background', 'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
             'Shirt', 'Sneaker', 'Bag', 'Ankle boot'),
    palette=[[0, 0, 0], [220, 20, 60], [119, 11, 32], [0, 0, 142], [0, 0, 230], [106, 0, 228],
             [0, 60, 100], [0, 80, 100], [0, 0, 70], [0, 0, 192], [250, 170, 30]])
image_size = (512, 512)

model = dict(data_preprocessor=dict(size=image_size), decode_head=dict(num_classes=11))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo,
                                     pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(
    data_root=data_root, metainfo=metainfo, pipeline=test_pipeline,
    data_prefix=dict(img_path='images/test', seg_map_path='semantic/test')))
