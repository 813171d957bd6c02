"""Learn a concept (textual inversion by default, conf/method/): python train.py concept=deku_tree init=tree"""

import sys

import hydra
from omegaconf import DictConfig

from textinv.cli import (check_output_dir_override, exit_on_user_error, one_line_hydra_errors,
                         reject_conflicting_overrides, reject_moved_keys)
from textinv.training.sweeps import collapse_steps_sweep, sweep_job


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    # imported here: a mistake caught before this point (overrides, Hydra's composition) exits without
    # loading torch, Lightning and diffusers (seconds of CPU)
    from textinv.training.job import print_plan, train

    if cfg.get("plan"):  # what the run would spend, without loading any weights
        print_plan(cfg)
        return
    with sweep_job():  # ends this job's W&B run and DDP ranks: the next sweep point starts its own
        train(cfg)


if __name__ == "__main__":
    reject_conflicting_overrides(sys.argv[1:])
    reject_moved_keys(sys.argv[1:])
    check_output_dir_override(sys.argv[1:])
    sys.argv[1:] = collapse_steps_sweep(sys.argv[1:])  # steps=a,b,c: one run evaluated at a, b and c
    one_line_hydra_errors()
    main()
