"""One path from a config to objects: every entry point gets po2_bias and the flip rule.

Regression tests for two bugs of the three-builders era: federated training built its recipe
from the name alone (``recipe.po2_bias`` silently ignored) and centralized training flipped
digits horizontally (the loader's default), while the tested ``flip_for`` rule was used nowhere.
"""

import numpy as np
import pytest

import core.data
import core.models
from core import federated
from core.config import (
    DatasetConfig,
    ExperimentConfig,
    ModelConfig,
    RecipeConfig,
    TrainConfig,
)
from core.experiment import build_model_for, recipe_of, train_loader


def po2_cfg(tmp_path, **dataset):
    return ExperimentConfig(
        model=ModelConfig("mlp"),
        recipe=RecipeConfig("lowcost-po2", po2_bias=5),
        dataset=DatasetConfig("digits", **dataset),
        train=TrainConfig(epochs=1, batch_size=50, max_batches=1, num_threads=1),
        output_dir=str(tmp_path),
    )


@pytest.fixture
def built(monkeypatch):
    """Record the recipe of every model built and the flip flag of every training loader."""
    recipes, flips = [], []
    real_build, real_loader = core.models.build_model, core.data.ImageLoader

    def spy_build(name, recipe, *args, **kwargs):
        recipes.append(recipe)
        return real_build(name, recipe, *args, **kwargs)

    class SpyLoader(real_loader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if self.shuffle:
                flips.append(self.flip)

    monkeypatch.setattr(core.models, "build_model", spy_build)
    monkeypatch.setattr(core.data, "ImageLoader", SpyLoader)
    return recipes, flips


def test_po2_bias_reaches_train_client_and_memory_paths(tmp_path, built):
    from core.memory.recipe import measure_recipe
    from launch.train import run

    recipes, _ = built
    cfg = po2_cfg(tmp_path)
    run(cfg)  # bitfed-train
    ds = federated.load_split(cfg, "train")
    model = federated.new_model(cfg, ds)  # ClientApp and ServerApp
    data = federated.LocalData(ds, np.arange(100), np.arange(0))
    federated.fit_local(model, data, cfg, server_round=1)
    measure_recipe("mlp", "lowcost-po2", 4, po2_bias=5, steps=0, phase="memory")  # bitfed-memory
    assert len(recipes) == 3
    assert [r.po2_bias for r in recipes] == [5, 5, 5]


@pytest.mark.parametrize(
    "name, flips", [("digits", False), ("mnist", False), ("svhn", False), ("cifar10", True)]
)
def test_flip_rule_of_the_training_loader(name, flips):
    cfg = ExperimentConfig(dataset=DatasetConfig(name, augment=True))
    ds = core.data.load_dataset("digits", None, "train")  # any images: the rule is by name
    assert train_loader(cfg, ds, seed=0).flip is flips


def test_centralized_and_federated_training_do_not_flip_digits(tmp_path, built):
    from launch.train import run

    _, flips = built
    cfg = po2_cfg(tmp_path, augment=True)
    run(cfg)
    ds = federated.load_split(cfg, "train")
    data = federated.LocalData(ds, np.arange(100), np.arange(0))
    federated.fit_local(federated.new_model(cfg, ds), data, cfg, server_round=1)
    assert flips == [False, False]


def test_model_is_seeded_from_the_config():
    cfg = ExperimentConfig(seed=3)
    a = build_model_for(cfg, (1, 8, 8), 10).state_dict()
    b = build_model_for(cfg, (1, 8, 8), 10).state_dict()
    c = build_model_for(ExperimentConfig(seed=4), (1, 8, 8), 10).state_dict()
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a if a[k].is_floating_point())
    assert recipe_of(cfg).po2_bias is None  # lowcost has no PO2 quantizer


def test_each_client_and_round_rounds_with_its_own_noise(tmp_path, monkeypatch):
    """The low-cost optimizer's stochastic-rounding generator is seeded per client and round
    (it was seeded 0 everywhere: every client rounded its float16 update with the same noise)."""
    import core.optim

    seeds = []
    real = core.optim.LowCostAdam

    class SpyAdam(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seeds.append(self._generator.initial_seed())

    monkeypatch.setattr(core.optim, "LowCostAdam", SpyAdam)
    cfg = po2_cfg(tmp_path)
    ds = federated.load_split(cfg, "train")
    for server_round, first in [(1, 0), (1, 100), (2, 0)]:
        data = federated.LocalData(ds, np.arange(first, first + 100), np.arange(0))
        federated.fit_local(federated.new_model(cfg, ds), data, cfg, server_round=server_round)
    assert len(seeds) == 3 and len(set(seeds)) == 3
