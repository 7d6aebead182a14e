from pathlib import Path

from setuptools import find_packages, setup


def version():
    ns = {}
    exec((Path(__file__).parent / 'convneur_mm' / 'version.py').read_text(), ns)
    return ns['__version__']


setup(
    name='convneur-mm',
    version=version(),
    description='ConvNeur (global-local decoupled backbone with a neural memory) for OpenMMLab 2.0',
    long_description=Path('README.md').read_text() if Path('README.md').exists() else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['convneur_mm', 'convneur_mm.*']),
    # torch and mmengine are all the model needs; the OpenMMLab task packages are optional.
    install_requires=['torch>=2.1', 'mmengine>=0.10.4'],
    extras_require={
        'mm': ['mmdet==3.3.0', 'mmsegmentation==1.2.2', 'mmpretrain==1.2.0'],
        'tests': ['pytest', 'onnx', 'onnxscript', 'onnxruntime'],
    },
)
