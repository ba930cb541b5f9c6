"""Networks: each method's in its own module (named in its task), plus the
shared VGG16 stack (`vgg16.py`) that RECNet's loss and LPIPS run."""
