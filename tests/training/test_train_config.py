"""Recipes and configuration: precedence, shipped recipes, unknown keys and bad values."""

from __future__ import annotations

import pytest

from tresnet.data.transforms import CROP_MODES
from tresnet.errors import ConfigError, ModelNotFoundError
from tresnet.layers import NORMS as LAYER_NORMS
from tresnet.recipes import list_recipes, recipe_path
from tresnet.runtime import PRECISIONS
from tresnet.training.config import (
    FIELDS,
    NORMS,
    TrainConfig,
    build_config,
    load_recipe,
    recipe_for_model,
    run_recipe,
    save_config,
    with_model_defaults,
)

BASE = {"data": "digits", "output": "out"}


def test_shipped_recipes_load_and_validate():
    names = list_recipes()
    for name in ("imagenet-paper", "imagenet-timm", "finetune", "highres-448", "digits-demo"):
        assert name in names
        values = load_recipe(name)
        TrainConfig(**{**values, **BASE}).validate()
    paper = load_recipe("imagenet-paper")
    assert (paper["optimizer"], paper["schedule"], paper["epochs"]) == ("sgd", "onecycle", 300)
    assert paper["auto_augment"] == "autoaugment" and paper["label_smoothing"] == 0.1
    finetune = load_recipe("finetune")
    assert (finetune["optimizer"], finetune["lr"], finetune["warmup_epochs"], finetune["ema_decay"]) == \
        ("adamw", 2e-4, 3, 0.995)
    assert load_recipe("highres-448")["img_size"] == 448
    assert {load_recipe(name).get("precision", "fp32") for name in names} <= set(PRECISIONS)


def test_precedence_defaults_recipe_options(tmp_path):
    cfg = build_config("finetune", {"data": "d", "output": str(tmp_path), "lr": 0.5})
    assert cfg.lr == 0.5  # option beats recipe
    assert cfg.epochs == load_recipe("finetune")["epochs"]  # recipe beats default
    assert cfg.momentum == TrainConfig.momentum  # default
    # digits with no recipe picks the demo recipe; any option still overrides it
    demo = build_config(None, {"data": "digits", "output": "o", "epochs": 2})
    assert demo.img_size == load_recipe("digits-demo")["img_size"] and demo.epochs == 2
    assert build_config(None, {"data": "folder", "output": "o"}).img_size is None


def test_unknown_recipe_key_names_it_and_the_valid_ones(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lrr: 0.1\nepochs: 3\n")
    with pytest.raises(ConfigError) as info:
        build_config(str(recipe), BASE)
    message = str(info.value)
    assert "'lrr'" in message and "did you mean 'lr'" in message and "batch_size" in message


def test_bad_values_and_missing_things(tmp_path):
    with pytest.raises(ConfigError, match="optimizer .* one of sgd, adamw, adam"):
        build_config(None, {**BASE, "optimizer": "lamb"})
    with pytest.raises(ConfigError, match="epochs .* integer"):
        build_config(None, {**BASE, "epochs": "many"})
    with pytest.raises(ConfigError, match="label_smoothing"):
        build_config(None, {**BASE, "label_smoothing": 1.5})
    with pytest.raises(ConfigError, match="no training data"):
        build_config(None, {"output": "o"})
    with pytest.raises(ConfigError, match="no recipe 'nope'"):
        build_config("nope", BASE)
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(bad)


def test_values_are_coerced_from_strings_and_dashes():
    cfg = build_config(None, {**BASE, "lr": "0.01", "channels-last": "true", "scale": ["0.5", "1"],
                              "clip_grad": "none", "precision": "bf16", "crop_mode": "none"})
    assert cfg.lr == 0.01 and cfg.channels_last is True and cfg.scale == (0.5, 1.0) and cfg.clip_grad is None
    assert cfg.precision == "bf16" and cfg.crop_mode is None
    with pytest.raises(ConfigError, match="precision .* one of fp32, amp, bf16, fp16"):
        build_config(None, {**BASE, "precision": "fp8"})
    with pytest.raises(ConfigError, match="epochs .* integer, got 2.5"):
        build_config(None, {**BASE, "epochs": 2.5})
    with pytest.raises(ConfigError, match="channels_last .* true or false"):
        build_config(None, {**BASE, "channels_last": 1})


def test_choices_are_checked_when_the_config_is_built_directly():
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainConfig(**BASE, precision="half").validate()
    with pytest.raises(ConfigError, match="norm must be one of inplace_abn, bn"):
        TrainConfig(**BASE, norm="inplace_abn_sync").validate()


def test_tables_come_from_the_layers_and_the_transforms():
    assert NORMS == tuple(n for n in LAYER_NORMS if n != "inplace_abn_sync")
    assert FIELDS["norm"].metadata["choices"] == NORMS
    assert FIELDS["crop_mode"].metadata["choices"] == CROP_MODES
    assert FIELDS["precision"].metadata["choices"] == PRECISIONS
    assert "amp" not in FIELDS and "amp_dtype" not in FIELDS


def test_the_amp_keys_of_earlier_versions_fail_naming_precision(tmp_path):
    for key in ("amp", "amp_dtype", "amp-dtype"):
        with pytest.raises(ConfigError, match=r"'amp(_dtype)?' in the options is now precision: "):
            build_config(None, {**BASE, key: True})
    recipe = tmp_path / "old.yaml"
    recipe.write_text("epochs: 2\namp: true\n")
    with pytest.raises(ConfigError, match=r"'amp' in recipe .*old.yaml is now precision: amp"):
        load_recipe(recipe)
    with pytest.raises(TypeError):
        TrainConfig(**BASE, amp=True)


def test_saved_config_round_trips_and_guards_resume(tmp_path):
    cfg = build_config(None, {"data": "digits", "output": str(tmp_path), "epochs": 3})
    save_config(cfg, tmp_path / "config.yaml")
    assert recipe_path(tmp_path / "config.yaml").is_file()
    assert TrainConfig(**load_recipe(tmp_path / "config.yaml")) == cfg
    # --resume with nothing else continues with the saved configuration
    resumed = build_config(None, {"output": str(tmp_path), "resume": True, "progress": False})
    assert resumed.epochs == 3 and resumed.data == "digits" and resumed.progress is False
    with pytest.raises(ConfigError, match=r"epochs \(saved 3, given 5\)"):
        build_config(None, {"output": str(tmp_path), "resume": True, "epochs": 5})


def test_a_run_saved_with_amp_keys_says_where_they_went(tmp_path):
    cfg = build_config(None, {"data": "digits", "output": str(tmp_path), "precision": "amp"})
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "precision: amp" in text and "amp_dtype" not in text
    (tmp_path / "config.yaml").write_text(text.replace("precision: amp", "amp: true"))
    with pytest.raises(ConfigError, match=r"'amp' in recipe .*config.yaml is now precision: amp") as info:
        build_config(None, {"output": str(tmp_path), "resume": True})
    assert "\n" not in str(info.value)


def test_the_norm_defaults_to_the_model_family():
    assert TrainConfig.norm is None and FIELDS["norm"].metadata["choices"] == NORMS
    tres = build_config(None, {**BASE, "model": "tresnet_m"})
    genet = build_config(None, {**BASE, "model": "genet_light"})
    assert tres.norm is None and genet.norm is None  # filled in when the run starts
    assert with_model_defaults(tres).norm == "inplace_abn" and with_model_defaults(genet).norm == "bn"
    assert with_model_defaults(build_config(None, {**BASE, "norm": "bn"})).norm == "bn"
    with pytest.raises(ConfigError) as info:
        build_config(None, {**BASE, "model": "genet_light", "norm": "inplace_abn"})
    message = str(info.value)
    assert "\n" not in message and "genet_light" in message and "--norm bn" in message
    with pytest.raises(ModelNotFoundError, match="unknown model 'genet_tiny'"):
        build_config(None, {**BASE, "model": "genet_tiny"})


def test_a_shipped_recipe_is_used_in_the_form_of_the_model_family(tmp_path):
    assert "finetune-genet" in list_recipes()
    assert recipe_for_model("finetune", "genet_normal") == "finetune-genet"
    assert recipe_for_model("finetune.yaml", "genet_normal") == "finetune-genet"
    assert recipe_for_model("finetune", "tresnet_m") == "finetune"
    assert recipe_for_model("highres-448", "genet_large") == "highres-448"  # no GENet form: as it is
    assert recipe_for_model("digits-demo", "genet_light") == "digits-demo"  # one recipe serves both families
    own = tmp_path / "finetune.yaml"
    own.write_text("epochs: 2\n")
    assert recipe_for_model(own, "genet_light") == own  # a file is used as it is
    assert run_recipe(None, {"data": "digits", "model": "genet_light"}) == "digits-demo"
    assert run_recipe(None, {"data": "folder"}) is None
    genet_recipe = tmp_path / "genet.yaml"
    genet_recipe.write_text("model: genet_light\n")
    assert run_recipe("finetune", {}) == "finetune" and run_recipe(genet_recipe, {}) == genet_recipe
    cfg = build_config("finetune", {**BASE, "model": "genet_light"})
    assert cfg == build_config("finetune-genet", {**BASE, "model": "genet_light"}) and cfg.img_size is None
    assert build_config("finetune", BASE).img_size == 224
