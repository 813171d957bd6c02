"""Hypernetworks (NovelAI's method, as AUTOMATIC1111 trains and loads them): small MLPs that transform the inputs
of every UNet attention's keys and values, `x + mlp(x) * multiplier`, trained against the frozen model.
  network.py  the spec (AUTOMATIC1111's options) and the modules it builds
  attach.py   hooks that apply one or several hypernetworks to a diffusers UNet
  files.py    AUTOMATIC1111's `.pt` layout (what ComfyUI reads too) and a pickle-free safetensors copy
"""
