"""Model directories: Hugging Face, our native format, and training run directories.

hf          Hugging Face config mapping, weight tables, import and export_hf
native      our directory format: save_pretrained, load_native
runs        models and LoRA adapters from a run directory's checkpoints, read-only
pretrained  from_pretrained and convert, whichever of the three a directory is
"""
