"""Built-in self-supervised pretraining: recipes, backbones, augmentations, objectives, training, checkpoints."""

from riskdecomp.pretrain.backbones import RecipeEncoder, create_backbone
from riskdecomp.pretrain.checkpoint import (
           eval_transform,
           load_checkpoint,
           pretrain_to_file,
           pretrained_checkpoint,
           save_checkpoint,
)
from riskdecomp.pretrain.recipe import Recipe
from riskdecomp.pretrain.train import pretrain

__all__ = ["Recipe", "RecipeEncoder", "create_backbone", "pretrain", "save_checkpoint", "load_checkpoint",
           "eval_transform", "pretrained_checkpoint", "pretrain_to_file"]
