"""What a model and a recipe's stages cost before anything is downloaded or trained: parameters per
part (the model built on the meta device), visual tokens per medium, FLOPs per sample and memory per
GPU. ``llavakit plan`` prints it."""
