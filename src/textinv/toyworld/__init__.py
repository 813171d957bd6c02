"""The pretrained miniature world: a captioned procedural image world and small models trained on it.

It is a measuring instrument (tests, `make demo`, method comparisons), not a model for users: real
Stable Diffusion stays the default (`model=sd15`). Layout:
  world.py     scenes, drawing, captions          draw.py     few-shot concept sets
  models.py    the networks' configs              stages.py   resumable training loops
  pretrain.py  the recipe (make toyworld)         export.py   diffusers / open_clip folders, checksums
  report.py    what the models can do             attributes.py  what generated images show
  weights/     the committed result (sd/, clip/, classifier/, curves/, report.json, SHA256SUMS)
"""

from pathlib import Path

TOYWORLD_WEIGHTS = Path(__file__).resolve().parent / "weights"
TOYWORLD_SD = TOYWORLD_WEIGHTS / "sd"  # model=toy
TOYWORLD_CLIP = TOYWORLD_WEIGHTS / "clip"  # eval.clip.arch=toyworld
TOYWORLD_CLASSIFIER = TOYWORLD_WEIGHTS / "classifier"
