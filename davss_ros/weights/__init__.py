"""Checkpoints shipped with the package (installed with it), and the default model.

The package ships one trained model, ``davss_cpu.pt``: the ``cpu`` preset's architecture
(MobileNetV3-L DeepLabv3+ at 256x512, DIS flow) with a 1.5x wider segmenter and the
``signals`` distortion estimator, trained by ``config/train/synthetic_strong.yaml`` and
stored as float16 by ``davss export --half`` (docs/MODEL_CARD.md). It is the default of the node
(``model.checkpoint`` empty), of ``davss demo`` and of ``davss eval``.

``DAVSS_WEIGHTS_DIR`` (environment) names another folder to take ``davss_cpu.pt`` from,
e.g. a model retrained on your own data, without passing a path to every tool. When it is
set, the package's own folder is not looked at.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DAVSS_WEIGHTS_DIR"
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = PACKAGE_WEIGHTS_DIR  # the installed folder (DAVSS_WEIGHTS_DIR aside)
DEFAULT_NAME = "davss_cpu.pt"
# The model.config value the shipped model was trained as: only it defaults to the file.
SHIPPED_CONFIG = "cpu"
# model.checkpoint value asking for random weights of model.config (tests, timing).
UNTRAINED = "untrained"


def weights_dir() -> Path:
    """Where the default model is looked for: $DAVSS_WEIGHTS_DIR, else the package's."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser().absolute() if env else PACKAGE_WEIGHTS_DIR


def default_checkpoint_path() -> Path:
    """Where the default model would be (whether or not the file exists)."""
    return weights_dir() / DEFAULT_NAME


def default_checkpoint() -> Path | None:
    """The shipped CPU model, or None while there is none (see ``weights_dir``)."""
    path = default_checkpoint_path()
    return path if path.is_file() else None


def resolve_checkpoint(checkpoint: str, config: str = SHIPPED_CONFIG) -> tuple[Path | None, str]:
    """The file that the node's ``model.checkpoint`` / ``model.config`` values select.

    Returns ``(path, "")`` for a file to load, or ``(None, reason)`` for untrained weights
    of ``config``, the reason saying why (for the warning):

    - ``"untrained"``: random weights, asked for;
    - a path: that file (its own existence is checked when it is loaded);
    - empty: the shipped model when ``config`` is ``cpu``, its architecture. Another
      ``config`` has no shipped weights, and a missing shipped file (a source checkout
      without it) also leaves untrained weights.
    """
    checkpoint = checkpoint.strip()
    if checkpoint == UNTRAINED:
        return None, f"model.checkpoint is '{UNTRAINED}'"
    if checkpoint:
        return Path(checkpoint).expanduser(), ""
    if config != SHIPPED_CONFIG:
        return None, (f"model.checkpoint is empty and model.config is {config!r}: only the "
                      f"'{SHIPPED_CONFIG}' preset has a shipped model")
    path = default_checkpoint()
    if path is None:
        where = default_checkpoint_path()
        env = f" (${ENV_VAR})" if os.environ.get(ENV_VAR, "").strip() else ""
        return None, f"model.checkpoint is empty and no model is shipped: {where}{env} is missing"
    return path, ""
