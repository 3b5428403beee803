"""Image generation: requests in, PNGs out. Knows nothing of Discord or storage."""

import os
import warnings

# transformers warns at import time about optional vision extras we never use; keep the CLI's and
# the bot's output to what the user asked for. An explicit setting still wins.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# diffusers 0.42 still passes an argument huggingface_hub 2.x deprecated; it warns on every load.
warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
