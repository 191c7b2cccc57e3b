"""The BK-SDM core, free of ComfyUI: plain functions on plain data, testable without a host.

``layout`` what a U-Net's blocks are and how they map to the teacher's; ``files`` reading
models from disk; ``download`` getting them from the hub; ``errors`` the one error family
(file, expected, found, fix) that all three raise."""
