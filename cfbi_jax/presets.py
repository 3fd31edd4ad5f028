"""Model settings of the released CFBI variants and of the tiny test models.

`model_config(variant)` returns the `config.model` block that
`model.from_config` turns into a `CFBI` module. The official variants carry
the evaluation flags of their official scripts (`cfbi-official-notes.md`
§20.1): `cfbi_resnet101` and `cfbi_mobilenetv2` as `ytb_eval.sh` /
`davis_eval.sh` run them (float32 matching, global atrous 1, 4 global
chunks), `cfbip_resnet101` as `ytb_eval_cfbip.sh` (global atrous 2 at /4,
chunks 4/1/1). `davis_overrides(variant)` gives the DAVIS-script flags
(CFBI+: `min_matching_pixels=100`). The converter writes the variant's block
beside every converted checkpoint, and configs in `configs/` start from it.
"""

import ml_collections

VARIANTS = ('cfbi_resnet101', 'cfbi_mobilenetv2', 'cfbip_resnet101',
            'tiny_cfbi', 'tiny_cfbip')

_CFBI_WINDOWS = (2, 4, 6, 8, 10, 12)


def model_config(variant: str) -> ml_collections.ConfigDict:
  """The model block of `variant` (one of `VARIANTS`)."""
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; expected one of {VARIANTS}')
  c = dict(
      variant=variant, arch='cfbi', backbone='resnet',
      resnet_blocks=(3, 4, 23, 3), resnet_width=64, aspp_channels=256,
      decoder_channels=256, embedding_dim=100, matching_dims=(100,),
      gn_groups=32, gn_embedding_groups=25, gn_groups_refine=16,
      prehead_dim=64, ensembler_dim=256, refine_dim=64,
      local_windows=(_CFBI_WINDOWS,), local_atrous=(1,),
      local_downsample=True, global_atrous=(1,), global_chunks=(4,),
      min_matching_pixels=0, matching_dtype='float32',
      attention_uses_atrous_labels=True,
      # Ablation switches (`model.CFBI`); the released models use these.
      use_background=True, use_matching_bias=True, use_attention=True,
      head='ensembler',
      # 'group_norm' for DeepLab trained from scratch (configs/synthetic.py).
      backbone_norm='frozen_bn')
  if variant == 'cfbi_mobilenetv2':
    c.update(backbone='mobilenetv2')
  elif variant == 'cfbip_resnet101':
    c.update(arch='cfbip', embedding_dim=256, matching_dims=(32, 64, 128),
             local_windows=((4, 8, 12, 16, 20, 24), _CFBI_WINDOWS,
                            (2, 4, 6, 8, 10)),
             local_atrous=(2, 1, 1), local_downsample=False,
             global_atrous=(2, 1, 1), global_chunks=(4, 1, 1))
  elif variant.startswith('tiny'):
    # About 1M parameters: ResNet with one block per stage, width 8.
    c.update(resnet_blocks=(1, 1, 1, 1), resnet_width=8, aspp_channels=32,
             decoder_channels=32, embedding_dim=16, matching_dims=(16,),
             gn_groups=4, gn_embedding_groups=4, gn_groups_refine=4,
             prehead_dim=16, ensembler_dim=32, refine_dim=16,
             local_windows=((2, 4),), global_chunks=(1,))
    if variant == 'tiny_cfbip':
      c.update(arch='cfbip', embedding_dim=16, matching_dims=(8, 8, 16),
               local_windows=((2, 4), (2, 4), (2,)), local_atrous=(2, 1, 1),
               local_downsample=False, global_atrous=(2, 1, 1),
               global_chunks=(2, 1, 1))
  return ml_collections.ConfigDict(c)


def davis_overrides(variant: str) -> dict:
  """Model fields that the official DAVIS scripts set differently."""
  if variant == 'cfbip_resnet101':
    return {'min_matching_pixels': 100}
  return {}
