"""HF_HUB_OFFLINE means what huggingface_hub takes it to mean, for the model loader and the metrics alike."""

import pytest
from huggingface_hub import constants

from textinv.utils.offline import TRUE_VALUES, hub_offline


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("TRUE", True), ("yes", True), ("On", True),
                                            ("0", False), ("false", False), ("FALSE", False), ("", False),
                                            ("no", False)])
def test_parsed_as_huggingface_hub_does(monkeypatch, value, offline):
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is offline
    assert constants._is_true(value or None) is offline  # the library's own reading agrees


def test_unset_is_online_and_transformers_offline_counts(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not hub_offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert hub_offline()
    assert TRUE_VALUES == constants.ENV_VARS_TRUE_VALUES


def test_metrics_and_model_loader_read_the_same_switch(monkeypatch):
    """FALSE used to mean offline to frozen_sd.py and online to metrics.py: both now call hub_offline."""
    import textinv.evaluation.metrics as metrics
    import textinv.models.frozen_sd as frozen_sd

    assert metrics.hub_offline is hub_offline and frozen_sd.hub_offline is hub_offline
