"""Training of the DAVSS networks, stage by stage (``davss train``; see ``runner``).

Stage 0 segmenter, 1 flow network (learned flow only), 2 DMNet, 3 flow + CFNet with dual
deep supervision and the Accel baseline's branch. Configuration: ``config.TrainConfig``
(YAML files in config/train/); losses: ``losses``; the stage modules: ``stages``.
"""

from .config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config"]
