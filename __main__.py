"""The pack's commands, run by the pack's folder path from any working directory:

    python path/to/ComfyUI-BK-SDM txt2img "a red fox in the snow" --model bk-sdm-small -o fox.png
    python path/to/ComfyUI-BK-SDM download bk-sdm-small
    python path/to/ComfyUI-BK-SDM convert path/to/bk-sdm-small bk-sdm-small.safetensors

Paths on the command line are taken as typed, from the folder the command is run in. With
ComfyUI's Python (the portable build's ``python_embeded\\python.exe`` on Windows) it runs in
the ComfyUI the pack is installed in. ComfyUI itself never runs this file.
"""

import sys
from pathlib import Path

COMMANDS = ("txt2img", "download", "convert")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.stderr.write(f"usage: python {Path(__file__).parent} {{{','.join(COMMANDS)}}} [options]\n"
                         f"       python {Path(__file__).parent} COMMAND --help\n")
        return 2
    # Python puts this folder first on sys.path when it runs a folder; an embedded Python
    # whose ._pth file fixes sys.path may not, so make sure.
    folder = str(Path(__file__).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import pack_import

    return pack_import.pack_module(f"cli.{sys.argv[1]}").main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
