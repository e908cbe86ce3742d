"""Every recipe we ship parses against its domain's config: a renamed or misspelt key fails here, not an hour into a run."""
import pytest

from adaptive_exit.app.config import load_recipe
from tests.conftest import REPO

RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if p.parent.name != "cross_domain")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO / "recipes")))
def test_shipped_recipe_loads(path):
    recipe, _ = load_recipe(path)
    assert recipe.domain in ("toy", "text", "speech")
    # something trains: the exits, or (token reduction recipes, whose exits come from init_from) the selection
    assert recipe.train.max_steps > 0 or "token_reduction_training" in recipe.model
