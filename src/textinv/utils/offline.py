"""Whether the Hugging Face hub is switched off (HF_HUB_OFFLINE), read the way huggingface_hub reads it.

huggingface_hub.constants: `_is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))`
with true = 1/ON/YES/TRUE in any case; anything else (0, false, FALSE, unset) is online. Read at call time
(huggingface_hub reads it once at import), so a test or a caller may set it late.
"""

from __future__ import annotations

import os

TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # huggingface_hub.constants.ENV_VARS_TRUE_VALUES


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.upper() in TRUE_VALUES
