"""Quality metrics of corrected images: SSIM and LPIPS."""
