"""The U-Net's layout and what follows from it: the spec, its tensors and blocks, the nine
variants, the teacher-to-student block map and the translations built on it (LoRA keys,
control residuals, teacher addresses). Pure functions of a ``UNetSpec``; no file is read here."""
