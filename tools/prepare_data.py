"""Build the small real datasets of the demos from images that ship in registry packages.

    python tools/prepare_data.py                 # every set into ./data (about a minute)
    python tools/prepare_data.py --only nuclei --out /somewhere/data

* ``data/nuclei``: the DSB2018 fluorescence image with its ground-truth instance map (125 nuclei,
  512x512) from the ``stardist==0.9.2`` wheel, cut into 128x128 tiles. The left 384 columns give
  35 training tiles (stride 64, so they overlap), the right 128 columns 4 validation tiles, so no
  validation pixel is ever seen in training. Written as COCO instance segmentation
  (``annotations/instances_{train,val}.json``, RLE masks) and as semantic maps
  (``semantic/{train,val}/*.png``: 0 background, 1 nucleus) over the same ``images/``.
* ``data/fashion_mnist``: the first 600 training and 100 test images of each class of Debian's
  ``dataset-fashion-mnist`` package, as PNGs with mmpretrain ``CustomDataset`` lists
  (``meta/{train,val}.txt``).
* ``data/fashion_scenes``: canvases of 256-512 px composed of real Fashion-MNIST photographs at
  1.5-3.5x their size, with little overlap. Training scenes use only the 60k training images;
  validation and test scenes use test images 0-4999 and 5000-9999, so no photograph is shared
  between splits. Written as COCO instance segmentation (``annotations/instances_{train,val,test}
  .json``, one category per Fashion-MNIST class, RLE masks of each item's visible silhouette) and
  as semantic maps (``semantic/{split}/*.png``: 0 background, 1-10 the classes) over the same
  grayscale ``images/{split}/*.png``. ``classification/`` holds the pre-training set: all 60k
  training images and, for validation, the 10k test images, as PNGs with ``meta/{train,val}.txt``
  lists, laid out like ``data/fashion_mnist``.

Downloads (3 MB and 31 MB) are cached in ``~/.cache/convneur-mm/downloads``; the output is the
same byte for byte on every run.
"""
import argparse
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from convneur_mm.scenes import FASHION_CLASSES, SCENE_SIZES, compose_scene, split_pools

STARDIST = 'stardist==0.9.2'
FASHION_DEB = 'dataset-fashion-mnist'
TILE, STRIDE, VAL_X = 128, 64, 384
MIN_AREA = 12  # px; smaller fragments are nuclei cut by a tile border
VERSION = 1    # bump when the output changes, so stale folders are rebuilt
SCENE_COUNTS = dict(train=2000, val=500, test=500)


def log(msg):
    print(f'[prepare_data] {msg}', flush=True)


# ----------------------------------------------------------------------------- downloads
def fetch_stardist(cache):
    wheels = sorted(cache.glob('stardist-0.9.2-*.whl'))
    if not wheels:
        log(f'downloading {STARDIST} (wheel, data files only are used)')
        subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps',
                        '--only-binary', ':all:', '-d', str(cache), STARDIST], check=True)
        wheels = sorted(cache.glob('stardist-0.9.2-*.whl'))
    with zipfile.ZipFile(wheels[0]) as z:
        read = lambda name: np.array(Image.open(io.BytesIO(z.read(f'stardist/data/images/{name}'))))
        return read('img2d.tif'), read('mask2d.tif')


def fetch_fashion_deb(cache):
    debs = sorted(cache.glob(f'{FASHION_DEB}_*.deb'))
    if debs:
        return debs[0]
    if shutil.which('apt-get') is None:
        raise SystemExit(f'apt-get not found: download the Debian package {FASHION_DEB} '
                         f'(bookworm, arch all) by hand into {cache} and run again')
    log(f'downloading Debian package {FASHION_DEB}')
    cmd = ['apt-get', 'download', '-q', FASHION_DEB]
    if subprocess.run(cmd, cwd=cache, capture_output=True).returncode != 0:
        log('apt-get download failed; refreshing the package lists (apt-get update) and retrying')
        subprocess.run(['apt-get', 'update', '-q'], check=True, capture_output=True)
        subprocess.run(cmd, cwd=cache, check=True)
    return sorted(cache.glob(f'{FASHION_DEB}_*.deb'))[0]


def deb_files(deb, wanted):
    """Read files from a .deb (an ar archive holding data.tar.*) without dpkg."""
    data = deb.read_bytes()
    if data[:8] != b'!<arch>\n':
        raise SystemExit(f'{deb} is not a Debian package (bad ar magic); delete it and run again')
    pos, out = 8, {}
    while pos < len(data):
        name = data[pos:pos + 16].decode().strip().rstrip('/')
        size = int(data[pos + 48:pos + 58].decode().strip())
        if name.startswith('data.tar'):
            with tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size])) as tar:
                for member in tar.getmembers():
                    base = os.path.basename(member.name)
                    if base in wanted:
                        out[base] = tar.extractfile(member).read()
        pos += 60 + size + size % 2
    missing = set(wanted) - set(out)
    if missing:
        raise SystemExit(f'{deb} lacks {sorted(missing)}')
    return out


# ----------------------------------------------------------------------------- nuclei
def save_png(array, path):
    # Fixed PNG settings and no metadata keep the files identical from run to run.
    Image.fromarray(array).save(path, format='PNG', compress_level=6)


def to_uint8(image):
    lo, hi = np.percentile(image, (1, 99.8))
    return (np.clip((image.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def rle(mask):
    from pycocotools import mask as mask_utils
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=list(encoded['size']), counts=encoded['counts'].decode('ascii'))


def prepare_nuclei(out, cache):
    image, labels = fetch_stardist(cache)
    if image.shape != (512, 512) or labels.shape != (512, 512):
        raise SystemExit(f'unexpected stardist data shapes {image.shape}, {labels.shape}')
    gray = to_uint8(image)
    splits = {
        'train': [(y, x) for y in range(0, 512 - TILE + 1, STRIDE)
                  for x in range(0, VAL_X - TILE + 1, STRIDE)],
        'val': [(y, VAL_X) for y in range(0, 512, TILE)],
    }
    for split, corners in splits.items():
        (out / 'images' / split).mkdir(parents=True)
        (out / 'semantic' / split).mkdir(parents=True)
        images, annotations = [], []
        for y, x in corners:
            name = f'{split}_y{y:03d}_x{x:03d}.png'
            tile = gray[y:y + TILE, x:x + TILE]
            ids = labels[y:y + TILE, x:x + TILE]
            save_png(np.repeat(tile[..., None], 3, axis=2), out / 'images' / split / name)
            semantic = np.zeros((TILE, TILE), np.uint8)
            image_id = len(images) + 1
            images.append(dict(id=image_id, file_name=name, height=TILE, width=TILE))
            for instance in np.unique(ids[ids > 0]):
                mask = ids == instance
                area = int(mask.sum())
                if area < MIN_AREA:
                    continue
                semantic[mask] = 1
                rows, cols = np.nonzero(mask)
                x0, y0 = int(cols.min()), int(rows.min())
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id, category_id=1, iscrowd=0,
                    area=area, segmentation=rle(mask),
                    bbox=[x0, y0, int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1]))
            save_png(semantic, out / 'semantic' / split / name)
        (out / 'annotations').mkdir(exist_ok=True)
        coco = dict(images=images, annotations=annotations,
                    categories=[dict(id=1, name='nucleus', supercategory='cell')])
        (out / 'annotations' / f'instances_{split}.json').write_text(json.dumps(coco))
        log(f'nuclei {split}: {len(images)} tiles of {TILE}x{TILE}, {len(annotations)} instances')


# ----------------------------------------------------------------------------- fashion-mnist
def read_idx(blob):
    data = gzip.decompress(blob)
    magic = int.from_bytes(data[:4], 'big')
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(magic & 0xFF)]
    offset = 4 + 4 * len(dims)
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(cache):
    """The 60k training and 10k test images and labels: {'train': (images, labels), 't10k': ...}."""
    files = deb_files(fetch_fashion_deb(cache), {
        'train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
        't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'})
    return {split: (read_idx(files[f'{split}-images-idx3-ubyte.gz']),
                    read_idx(files[f'{split}-labels-idx1-ubyte.gz']))
            for split in ('train', 't10k')}


def prepare_fashion_mnist(out, cache, per_class):
    arrays = load_fashion_mnist(cache)
    (out / 'meta').mkdir(parents=True)
    (out / 'meta' / 'classes.txt').write_text('\n'.join(FASHION_CLASSES) + '\n')
    for split, source in (('train', 'train'), ('val', 't10k')):
        images, labels = arrays[source]
        lines = []
        for label in range(len(FASHION_CLASSES)):
            folder = out / split / f'{label}'
            folder.mkdir(parents=True)
            for index in np.nonzero(labels == label)[0][:per_class[split]]:
                rel = f'{split}/{label}/{index:05d}.png'
                save_png(images[index], out / rel)
                lines.append(f'{rel} {label}')
        (out / 'meta' / f'{split}.txt').write_text('\n'.join(lines) + '\n')
        log(f'fashion_mnist {split}: {len(lines)} images of 28x28 from {source}')


# ----------------------------------------------------------------------------- fashion scenes
def prepare_fashion_scenes(out, cache, counts, per_class):
    # the pre-training set of the scenes protocol: the photographs themselves, by class
    prepare_fashion_mnist(out / 'classification', cache, per_class)
    pools = split_pools(load_fashion_mnist(cache))
    categories = [dict(id=i + 1, name=n, supercategory='fashion')
                  for i, n in enumerate(FASHION_CLASSES)]
    for split_id, (split, pool) in enumerate(pools.items()):
        (out / 'images' / split).mkdir(parents=True)
        (out / 'semantic' / split).mkdir(parents=True)
        records, annotations = [], []
        for n in range(counts[split]):
            rng = np.random.default_rng([split_id, n])  # a scene depends on its index only
            size = int(rng.choice(SCENE_SIZES))
            canvas, items = compose_scene(rng, pool, size)
            name = f'{split}_{n:05d}.png'
            semantic = np.zeros((size, size), np.uint8)
            image_id = n + 1
            records.append(dict(id=image_id, file_name=name, height=size, width=size))
            for category, mask in items:
                area = int(mask.sum())
                if area < MIN_AREA:  # hidden by the items painted over it
                    continue
                semantic[mask] = category + 1
                rows, cols = np.nonzero(mask)
                x0, y0 = int(cols.min()), int(rows.min())
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id, category_id=category + 1,
                    iscrowd=0, area=area, segmentation=rle(mask),
                    bbox=[x0, y0, int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1]))
            save_png(canvas, out / 'images' / split / name)
            save_png(semantic, out / 'semantic' / split / name)
        (out / 'annotations').mkdir(exist_ok=True)
        coco = dict(images=records, annotations=annotations, categories=categories)
        (out / 'annotations' / f'instances_{split}.json').write_text(json.dumps(coco))
        log(f'fashion_scenes {split}: {len(records)} scenes of {min(SCENE_SIZES)}-'
            f'{max(SCENE_SIZES)} px, {len(annotations)} instances')


# ----------------------------------------------------------------------------- main
def build(name, out, fn, options=''):
    stamp = out / '.prepared'
    signature = f'version {VERSION} {options}'.strip()
    if stamp.exists() and stamp.read_text().strip() == signature:
        log(f'{name}: up to date in {out}')
        return
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(out.name + '.partial')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fn(tmp)
    (tmp / '.prepared').write_text(signature + '\n')
    tmp.rename(out)  # only a complete folder ever carries the final name


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='data', help='output root (default: ./data)')
    parser.add_argument('--only', nargs='+', choices=('nuclei', 'fashion_mnist', 'fashion_scenes'),
                        default=('nuclei', 'fashion_mnist', 'fashion_scenes'))
    parser.add_argument('--cache', default=os.environ.get(
        'CONVNEUR_CACHE', str(Path.home() / '.cache' / 'convneur-mm')) + '/downloads')
    parser.add_argument('--fashion-per-class', type=int, nargs=2, default=(600, 100),
                        metavar=('TRAIN', 'VAL'), help='images per class (default: 600 100)')
    parser.add_argument('--scenes', type=int, nargs=3, metavar=('TRAIN', 'VAL', 'TEST'),
                        default=tuple(SCENE_COUNTS.values()),
                        help='fashion_scenes per split (default: %(default)s)')
    parser.add_argument('--scenes-per-class', type=int, nargs=2, default=(6000, 1000),
                        metavar=('TRAIN', 'VAL'),
                        help='images per class of fashion_scenes/classification, from the 60k '
                             'training and the 10k test images (default: all, 6000 1000)')
    args = parser.parse_args()
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    start = time.time()
    if 'nuclei' in args.only:
        build('nuclei', out / 'nuclei', lambda d: prepare_nuclei(d, cache))
    if 'fashion_mnist' in args.only:
        per_class = dict(train=args.fashion_per_class[0], val=args.fashion_per_class[1])
        build('fashion_mnist', out / 'fashion_mnist',
              lambda d: prepare_fashion_mnist(d, cache, per_class), f'per_class {per_class}')
    if 'fashion_scenes' in args.only:
        if min(args.scenes) < 1:
            parser.error(f'--scenes needs at least one scene per split, got {args.scenes}')
        if not all(1 <= n <= m for n, m in zip(args.scenes_per_class, (6000, 1000))):
            parser.error('--scenes-per-class takes 1-6000 training and 1-1000 validation images '
                         f'per class, got {args.scenes_per_class}')
        counts = dict(zip(SCENE_COUNTS, args.scenes))
        scene_per_class = dict(train=args.scenes_per_class[0], val=args.scenes_per_class[1])
        build('fashion_scenes', out / 'fashion_scenes',
              lambda d: prepare_fashion_scenes(d, cache, counts, scene_per_class),
              f'scenes {counts} classification {scene_per_class}')
    log(f'done in {time.time() - start:.1f} s; datasets under {out.resolve()}')


if __name__ == '__main__':
    main()
