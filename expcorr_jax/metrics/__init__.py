"""Quality metrics of corrected images.

`image_quality` (PSNR, SSIM on RGB or luma), `ssim` (the Gaussian SSIM
kernel), `lpips` (LPIPS-VGG on the shared `models/vgg16.py`), `edges` (the
edge-map PSNR and F1 of UEC's downstream ablation).
"""
