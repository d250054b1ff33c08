"""Built-in self-supervised pretraining: recipes, backbones, augmentations, objectives, training, checkpoints."""

from .backbones import RecipeEncoder, create_backbone
from .checkpoint import eval_transform, load_checkpoint, pretrain_to_file, pretrained_checkpoint, save_checkpoint
from .recipe import Recipe
from .train import pretrain

__all__ = ["Recipe", "RecipeEncoder", "create_backbone", "pretrain", "save_checkpoint", "load_checkpoint",
           "eval_transform", "pretrained_checkpoint", "pretrain_to_file"]
