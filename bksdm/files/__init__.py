"""Reading models from disk: safetensors files, diffusers folders and their configs, single-file
checkpoints, and the U-Net, text encoder and VAE weights checked against the layout they claim."""
