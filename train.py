"""Train with a recipe: parse, load, build the trainer, train, save (the logic lives in `hf_distill.commands.train`).

accelerate launch --config_file accelerate_configs/multi_gpu.yaml train.py recipes/demo/distill.yaml
python train.py recipes/demo/distill.yaml --max_steps 5
"""

import sys

from hf_distill.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
