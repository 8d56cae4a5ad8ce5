"""Stand-in of k-diffusion (crowsonkb/k-diffusion), only k_diffusion.external.CompVisDenoiser."""
