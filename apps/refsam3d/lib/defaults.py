"""Every default shared by more than one part of the project, defined once (plain constants, no imports).

The ``--conf`` settings' own defaults are the fields of ``lib/settings.py:AppSettings``; the training options'
are the fields of ``lib/training/config.py:TrainConfig``.  Both take the shared ones from here, as do the
network (text encoder), the pre-processing (CT window), the label sets and the model store.
"""

PRESETS = ("vit_b", "small")  # vit_b: the paper's model on SAM ViT-B; small: CPU-sized, trained from scratch
DEFAULT_PRESET = "vit_b"
DEFAULT_LABEL_SET = "btcv"
DEFAULT_TEXT_ENCODER = "openai/clip-vit-base-patch16"  # the paper's CLIP text tower
DEFAULT_DEVICE = "auto"  # CUDA when available, else the CPU
DEFAULT_CT_WINDOW = (-1000.0, 1000.0)  # HU mapped to [0, 1] (label sets may set their own)
DEFAULT_SW_OVERLAP = 0.25  # MONAI's overlap fraction where a number is needed (validation, active learning)
# AdamW learning rate per preset: the paper's 1e-4 fine-tunes adapters on pre-trained SAM (vit_b); the small
# preset has no pre-trained image encoder and learns from scratch (docs/training.md)
DEFAULT_LEARNING_RATE = {"vit_b": 1e-4, "small": 1e-3}
MODALITIES = ("CT", "MR")
PRECISIONS = ("auto", "float32", "bfloat16")  # of the image encoding at inference (lib/precision.py)
DEFAULT_MIN_SIMILARITY = 0.6  # prompts less similar to every trained phrasing are warned about (lib/prompt_matching.py)
