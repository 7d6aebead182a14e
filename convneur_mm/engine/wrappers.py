from mmengine.model import MMDistributedDataParallel

from ..registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper for CPU processes: mmengine always passes ``device_ids``, which
    torch's DDP rejects for a module on the CPU."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module=module, device_ids=None, **kwargs)
