"""Importers of models trained elsewhere into davss_ros checkpoints.

- :mod:`davss_ros.importers.authors`: the DAVSS authors' released Cityscapes models
  (github.com/jfzhuang/DAVSS), ``davss import-authors``.
"""
