"""Recipes and configuration: precedence, shipped recipes, unknown keys and bad values."""

from __future__ import annotations

import pytest
import yaml

from tresnet.data.transforms import CROP_MODES
from tresnet.errors import ConfigError, ModelNotFoundError
from tresnet.layers import NORMS as LAYER_NORMS
from tresnet.recipes import list_recipes, recipe_path
from tresnet.runtime import PRECISIONS
from tresnet.training.config import (
    MOVED_KEYS,
    OPTIONS,
    TrainConfig,
    build_config,
    load_recipe,
    recipe_for_model,
    run_recipe,
    save_config,
    with_model_defaults,
)
from tresnet.training.sections import NORMS, SECTIONS

BASE = {"data": "digits", "output": "out"}


def test_shipped_recipes_load_and_validate():
    names = list_recipes()
    for name in ("imagenet-paper", "imagenet-timm", "finetune", "highres-448", "digits-demo"):
        assert name in names
        values = load_recipe(name)
        TrainConfig.from_options({**values, **BASE}).validate()
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
    assert cfg.optimisation.lr == 0.5  # option beats recipe
    assert cfg.optimisation.epochs == load_recipe("finetune")["epochs"]  # recipe beats default
    assert cfg.optimisation.momentum == OPTIONS["momentum"].default == 0.9  # default
    # digits with no recipe picks the demo recipe; any option still overrides it
    demo = build_config(None, {"data": "digits", "output": "o", "epochs": 2})
    assert demo.model.img_size == load_recipe("digits-demo")["img_size"] and demo.optimisation.epochs == 2
    assert build_config(None, {"data": "folder", "output": "o"}).model.img_size is None


def test_unknown_recipe_key_names_it_and_the_valid_ones(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optimisation:\n  lrr: 0.1\n  epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        build_config(str(recipe), BASE)
    message = str(info.value)
    assert "'lrr'" in message and "did you mean 'lr'" in message and "batch_size" in message
    with pytest.raises(ConfigError, match="unknown option 'lrr' in the options .*did you mean 'lr'"):
        build_config(None, {**BASE, "lrr": 0.1})
    recipe.write_text("optimisations:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'optimisations' .*did you mean 'optimisation'"):
        build_config(str(recipe), BASE)


def test_every_option_has_one_place_and_a_flat_key_names_it(tmp_path):
    assert len({o.place for o in OPTIONS.values()}) == len(OPTIONS) and {o.section for o in OPTIONS.values()} == \
        set(SECTIONS)
    assert (OPTIONS["lr"].place, OPTIONS["model"].place, OPTIONS["loss_reduction"].place,
            OPTIONS["data"].place, OPTIONS["distill"].place) == \
        ("optimisation.lr", "model.name", "loss.reduction", "data.train", "distillation.method")
    recipe = tmp_path / "flat.yaml"
    cases = {"lr: 0.1\n": "'lr' in recipe .* belongs in the section 'optimisation': write it as optimisation: "
                          "{lr: 0.1}",
             "model: tresnet_l\n": "the section 'model' in recipe .* must be a mapping: write model: "
                                   "{name: 'tresnet_l'}",
             "loss:\n  loss_reduction: sum\n": "'loss_reduction' in the section 'loss' of recipe .* is "
                                                "loss.reduction",
             "optimisation: 3\n": "the section 'optimisation' .* must be a mapping of its keys \\(epochs, "}
    for text, message in cases.items():
        recipe.write_text(text)
        with pytest.raises(ConfigError, match=message) as info:
            load_recipe(recipe)
        assert "\n" not in str(info.value)
    recipe.write_text("optimisation:\n  lr: 0.1\nmodel:\n  name: genet_light\ntask:\nrun:\n  precision: bf16\n")
    assert load_recipe(recipe) == {"lr": 0.1, "model": "genet_light", "precision": "bf16"}


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
    assert cfg.optimisation.lr == 0.01 and cfg.run.channels_last is True and cfg.augmentation.scale == (0.5, 1.0)
    assert cfg.optimisation.clip_grad is None and cfg.run.precision == "bf16" and cfg.data.crop_mode is None
    with pytest.raises(ConfigError, match="precision .* one of fp32, amp, bf16, fp16"):
        build_config(None, {**BASE, "precision": "fp8"})
    with pytest.raises(ConfigError, match="epochs .* integer, got 2.5"):
        build_config(None, {**BASE, "epochs": 2.5})
    with pytest.raises(ConfigError, match="channels_last .* true or false"):
        build_config(None, {**BASE, "channels_last": 1})


def test_choices_are_checked_when_the_config_is_built_directly():
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainConfig.from_options({**BASE, "precision": "half"}).validate()
    with pytest.raises(ConfigError, match="norm must be one of inplace_abn, bn"):
        TrainConfig.from_options({**BASE, "norm": "inplace_abn_sync"}).validate()


def test_tables_come_from_the_layers_and_the_transforms():
    assert NORMS == tuple(n for n in LAYER_NORMS if n != "inplace_abn_sync")
    assert OPTIONS["norm"].choices == NORMS
    assert OPTIONS["crop_mode"].choices == CROP_MODES
    assert OPTIONS["precision"].choices == PRECISIONS
    assert not set(MOVED_KEYS) & set(OPTIONS)


def test_the_amp_keys_of_earlier_versions_fail_naming_precision(tmp_path):
    for key in ("amp", "amp_dtype", "amp-dtype"):
        with pytest.raises(ConfigError, match=r"'amp(_dtype)?' in the options is now run.precision \(--precision\): "):
            build_config(None, {**BASE, key: True})
    recipe = tmp_path / "old.yaml"
    recipe.write_text("optimisation:\n  epochs: 2\namp: true\n")
    with pytest.raises(ConfigError, match=r"'amp' in recipe .*old.yaml is now run.precision \(--precision\): amp"):
        load_recipe(recipe)
    recipe.write_text("run:\n  amp: true\n")
    with pytest.raises(ConfigError, match=r"'amp' in recipe .*old.yaml is now run.precision"):
        load_recipe(recipe)
    with pytest.raises(ConfigError, match="unknown option 'amp'|'amp' in the options is now"):
        TrainConfig.from_options({**BASE, "amp": True})


def test_saved_config_round_trips_and_guards_resume(tmp_path):
    cfg = build_config(None, {"data": "digits", "output": str(tmp_path), "epochs": 3})
    save_config(cfg, tmp_path / "config.yaml")
    assert recipe_path(tmp_path / "config.yaml").is_file()
    assert TrainConfig.from_options(load_recipe(tmp_path / "config.yaml")) == cfg
    assert list(yaml.safe_load((tmp_path / "config.yaml").read_text())) == list(SECTIONS)
    # --resume with nothing else continues with the saved configuration
    resumed = build_config(None, {"output": str(tmp_path), "resume": True, "progress": False})
    assert resumed.optimisation.epochs == 3 and resumed.data.train == "digits" and resumed.run.progress is False
    with pytest.raises(ConfigError, match=r"epochs \(saved 3, given 5\)"):
        build_config(None, {"output": str(tmp_path), "resume": True, "epochs": 5})


def test_a_run_saved_with_amp_keys_says_where_they_went(tmp_path):
    cfg = build_config(None, {"data": "digits", "output": str(tmp_path), "precision": "amp"})
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "  precision: amp" in text and "amp_dtype" not in text
    (tmp_path / "config.yaml").write_text(text.replace("  precision: amp", "  amp: true"))
    with pytest.raises(ConfigError, match=r"'amp' in recipe .*config.yaml is now run.precision") as info:
        build_config(None, {"output": str(tmp_path), "resume": True})
    assert "\n" not in str(info.value)


def test_the_norm_defaults_to_the_model_family():
    assert OPTIONS["norm"].default is None and OPTIONS["norm"].choices == NORMS
    tres = build_config(None, {**BASE, "model": "tresnet_m"})
    genet = build_config(None, {**BASE, "model": "genet_light"})
    assert tres.model.norm is None and genet.model.norm is None  # filled in when the run starts
    assert with_model_defaults(tres).model.norm == "inplace_abn" and with_model_defaults(genet).model.norm == "bn"
    assert with_model_defaults(build_config(None, {**BASE, "norm": "bn"})).model.norm == "bn"
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
    own.write_text("optimisation:\n  epochs: 2\n")
    assert recipe_for_model(own, "genet_light") == own  # a file is used as it is
    assert run_recipe(None, {"data": "digits", "model": "genet_light"}) == "digits-demo"
    assert run_recipe(None, {"data": "folder"}) is None
    genet_recipe = tmp_path / "genet.yaml"
    genet_recipe.write_text("model:\n  name: genet_light\n")
    assert run_recipe("finetune", {}) == "finetune" and run_recipe(genet_recipe, {}) == genet_recipe
    cfg = build_config("finetune", {**BASE, "model": "genet_light"})
    assert cfg == build_config("finetune-genet", {**BASE, "model": "genet_light"}) and cfg.model.img_size is None
    assert build_config("finetune", BASE).model.img_size == 224
