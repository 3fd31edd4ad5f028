r"""Evaluate CFBI, CFBI+, FEELVOS or VideoMatch on DAVIS, YouTube-VOS or
your own video.

    python evaluate.py --config=configs/eval.py:variant=cfbi_resnet101,dataset=davis2017 \
        --config.checkpoint=DIR --config.data.root=ROOT --config.output_dir=OUT
    python evaluate.py --config=configs/video.py --config.video=PATH \
        --config.masks=PNG_OR_DIR --config.checkpoint=DIR --config.output_dir=OUT

A thin entry point over `cfbi_jax.commands.evaluate` (the same as the
installed `cfbi-evaluate`); see the config files. Errors in the input or
the config end in one line (`--verbose` for the traceback).
"""

from cfbi_jax import commands

if __name__ == '__main__':
  commands.evaluate()
