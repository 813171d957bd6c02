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


# --- a short bound on network access ------------------------------------------------------------------
# huggingface_hub and diffusers retry each file with 10 s timeouts: with no network a hub id took 78 s to fail with
# 12 lines, and longer when the network stalls. One request with a short timeout first tells which case this is.
PROBE_TIMEOUT_S = float(os.environ.get("TEXTINV_HUB_PROBE_TIMEOUT", "5"))
_reachable: dict[str, bool] = {}


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float | None = None) -> bool:
    """Whether the hub answers one HTTP request within `timeout` seconds (any HTTP status counts as an answer);
    asked once per process."""
    import urllib.error
    import urllib.request

    endpoint = hub_endpoint()
    if endpoint not in _reachable:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint + "/api/whoami-v2", method="HEAD"),
                                   timeout=PROBE_TIMEOUT_S if timeout is None else timeout).close()
            _reachable[endpoint] = True
        except urllib.error.HTTPError:
            _reachable[endpoint] = True  # it answered
        except Exception:  # noqa: BLE001 - DNS, refused, reset, timeout: no usable network
            _reachable[endpoint] = False
    return _reachable[endpoint]


def offline_if_unreachable(what: str) -> bool:
    """Before a download-capable load (open_clip's pretrained tags): when the hub does not answer within the probe's
    bound, switch huggingface_hub to offline mode for this process (it then reads its cache at once, and a missing
    file fails at once with the caller's one-line message) instead of retrying for minutes. True when switched."""
    import logging

    if hub_offline() or hub_reachable():
        return False
    import huggingface_hub.constants as hf_constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True
    logging.getLogger(__name__).warning("%s does not answer within %.0f s: loading %s from the local cache only "
                                        "(set HF_HUB_OFFLINE=1 to skip this check)", hub_endpoint(), PROBE_TIMEOUT_S,
                                        what)
    return True
