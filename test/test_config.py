"""davss_ros.config: presets, YAML overrides, validation."""

import pytest

from davss_ros.config import DavssConfig, load_config, preset


def test_default_preset_is_the_cpu_configuration():
    cfg = load_config(None)
    assert cfg.model.segmenter.backbone == "mobilenet_v3_large"
    assert cfg.model.flow.provider == "dis"
    assert (cfg.model.input_height, cfg.model.input_width) == (256, 512)


def test_paper_preset_matches_the_paper():
    cfg = preset("paper")
    assert cfg.model.segmenter.backbone == "xception65"
    assert cfg.model.segmenter.output_stride == 16
    assert cfg.model.segmenter.aspp_channels == 256
    assert cfg.model.flow.provider == "learned"
    assert (cfg.model.input_height, cfg.model.input_width) == (1024, 2048)


def test_dict_round_trip_is_lossless():
    cfg = preset("paper")
    assert DavssConfig.from_dict(cfg.to_dict()) == cfg


def test_yaml_file_names_a_preset_and_overrides_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: cpu\nmodel:\n  mode: dff\n  segmenter:\n    backbone: resnet18\n"
                    "schedule:\n  key_interval: 3\n")
    cfg = load_config(path)
    assert cfg.model.mode == "dff"
    assert cfg.model.segmenter.backbone == "resnet18"
    assert cfg.model.segmenter.aspp_channels == 128  # untouched default of the preset
    assert cfg.schedule.key_interval == 3


@pytest.mark.parametrize("override, field", [
    ({"model": {"mode": "fast"}}, "model.mode"),
    ({"model": {"input_height": 100}}, "model.input_height"),
    ({"schedule": {"key_interval": 0}}, "schedule.key_interval"),
    ({"schedule": {"threshold": 1.5}}, "schedule.threshold"),
    ({"model": {"segmenter": {"backbone": "vgg"}}}, "model.segmenter.backbone"),
    ({"model": {"colour": 1}}, "colour"),
    ({"model": {"distortion_map": "zero"}}, "model.distortion_map"),
])
def test_bad_values_are_refused_naming_the_field(override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        load_config(override)


def test_missing_yaml_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_config(tmp_path / "nothere.yaml")


def test_distortion_map_defaults_to_predicted_and_accepts_constant():
    assert load_config(None).model.distortion_map == "predicted"
    cfg = load_config({"model": {"distortion_map": "constant"}})
    assert cfg.model.distortion_map == "constant"
    assert DavssConfig.from_dict(cfg.to_dict()).model.distortion_map == "constant"
