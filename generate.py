"""Generate images with learned embeddings:
python generate.py prompt="A <deku-tree> tree in the forest" embeddings=[outputs/runs/.../deku-tree.pt]
"""

import sys

import hydra
from omegaconf import DictConfig

from textinv.cli import (check_output_dir_override, exit_on_user_error, one_line_hydra_errors,
                         reject_conflicting_overrides)
from textinv.models.generation import quote_text_overrides, run_generate


@hydra.main(config_path="conf", config_name="generate", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run_generate(cfg)


if __name__ == "__main__":
    reject_conflicting_overrides(sys.argv[1:])  # the same checks as train.py before Hydra creates the output folder
    check_output_dir_override(sys.argv[1:])
    sys.argv = quote_text_overrides(sys.argv)  # prompts hold <, >, commas: pass them as plain text
    one_line_hydra_errors()
    main()
