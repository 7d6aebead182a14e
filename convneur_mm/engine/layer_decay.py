from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise learning-rate decay for any backbone with ``get_layer_depth(name, prefix)``.

    mmdet's and mmseg's ``LearningRateDecayOptimizerConstructor`` accept only ConvNeXt (they test
    the class name), so this one asks the backbone for each parameter's depth instead.
    Use it as ``optim_wrapper=dict(constructor='convneur_mm.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))``.

    ``paramwise_cfg`` keys:
        layer_decay_rate (float): a parameter at layer i of n gets lr * rate ** (n - 1 - i);
            layers outside the backbone (necks, heads) get the full lr. Default: 1.0.
        flat_decay_mult (float): weight-decay multiplier of biases, norm weights and other
            parameters with at most one dimension. Default: 0 (no decay on norms and biases).
        custom_keys (dict[str, dict]): ``{substring: dict(lr_mult=..., decay_mult=...)}``
            applied on top, longest matching substring first.
    """

    def __init__(self, optim_wrapper_cfg, paramwise_cfg=None):
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = set(paramwise_cfg) - {'layer_decay_rate', 'flat_decay_mult', 'custom_keys'}
        if unknown:
            raise ValueError(f'{type(self).__name__} got unknown paramwise_cfg keys '
                             f'{sorted(unknown)}; accepted: layer_decay_rate, flat_decay_mult, '
                             f'custom_keys')
        paramwise_cfg.setdefault('layer_decay_rate', 1.0)
        paramwise_cfg.setdefault('flat_decay_mult', 0.0)
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params, module, **kwargs):
        backbone = getattr(module, 'backbone', module)
        if not hasattr(backbone, 'get_layer_depth'):
            raise TypeError(f'{type(self).__name__} needs a model whose backbone has '
                            f'get_layer_depth(); {type(backbone).__name__} has none')
        prefix = 'backbone.' if backbone is not module else ''
        cfg = self.paramwise_cfg
        custom = cfg.get('custom_keys', {})
        custom_order = sorted(custom, key=len, reverse=True)
        base_wd = self.base_wd or 0.0
        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id, num_layers = backbone.get_layer_depth(name, prefix)
            lr_mult = cfg['layer_decay_rate'] ** (num_layers - 1 - layer_id)
            flat = param.ndim <= 1 or 'norm' in name.rsplit('.', 1)[-1] or name.endswith('.bias')
            decay_mult = cfg['flat_decay_mult'] if flat else 1.0
            for key in custom_order:
                if key in name:
                    lr_mult *= custom[key].get('lr_mult', 1.0)
                    decay_mult = custom[key].get('decay_mult', decay_mult)
                    break
            group = groups.setdefault((layer_id, lr_mult, decay_mult), dict(
                params=[], lr=self.base_lr * lr_mult, weight_decay=base_wd * decay_mult,
                layer_id=layer_id))
            group['params'].append(param)
        params.extend(groups.values())
        print_log(f'{type(self).__name__}: {len(groups)} parameter groups, layer_decay_rate='
                  f'{cfg["layer_decay_rate"]}, lr multipliers '
                  f'{min(k[1] for k in groups):.3g}..{max(k[1] for k in groups):.3g}',
                  logger='current')
