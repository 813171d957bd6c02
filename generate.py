"""Generate images with learned embeddings:
python generate.py prompt="A <deku-tree> tree in the forest" embeddings=[outputs/runs/.../deku-tree.pt]
"""

import sys

import hydra
from omegaconf import DictConfig

from textinv.cli import exit_on_user_error
from textinv.models.generation import quote_text_overrides, run_generate


@hydra.main(config_path="conf", config_name="generate", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run_generate(cfg)


if __name__ == "__main__":
    sys.argv = quote_text_overrides(sys.argv)  # prompts hold <, >, commas: pass them as plain text
    main()
