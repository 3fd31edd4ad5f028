r"""Train CFBI, CFBI+, FEELVOS or VideoMatch
(`model=cfbi|cfbip|feelvos|videomatch` after the config file).

    python train.py --config=configs/ytvos.py:model=cfbi \
        --config.data.root=youtube-vos --workdir=runs/cfbi_ytvos

A thin entry point over `cfbi_jax.commands.train` (the same as the
installed `cfbi-train`); see the config files for the recipe and the
README for multi-host launches (`--distributed`). The trained model is
also written to `DIR/model` for `evaluate.py --config.checkpoint`. Errors
in the input or the config end in one line (`--verbose` for the
traceback).
"""

from cfbi_jax import commands

if __name__ == '__main__':
  commands.train()
