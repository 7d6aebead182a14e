# Pre-training of the scenes protocol, the ImageNet step in miniature: a ConvNeur-M1 classifier on
# all 60k Fashion-MNIST training images (python tools/prepare_data.py writes them to
# data/fashion_scenes/classification/), validated on the 10k test images. At 56x56, the scale of
# an item in the scenes (their items are 1.5-3.5x the 28-px photographs). Its last checkpoint
# initialises the scenes' detector and segmenter (the *_pretrained.py configs beside this one).
# The recipe is the Fashion-MNIST demo's; 2 epochs (1876 iterations).
_base_ = ['../demo/convneur-m1_fashion-mnist.py']

from convneur_mm.presets import gray_classification_pipelines

data_root = 'data/fashion_scenes/classification/'
image_size = 56
max_epochs = 2

train_pipeline, test_pipeline = gray_classification_pipelines(image_size, padding=6)
dataset = dict(data_root=data_root, classes=data_root + 'meta/classes.txt')
train_dataloader = dict(dataset=dict(**dataset, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(**dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(interval=max_epochs))
