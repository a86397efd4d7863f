"""Model directories: Hugging Face, our native format, and training run directories.

hf_config   Hugging Face config.json <-> ModelConfig, one Family per model type
hf_tables   each family's tensor table and the exact transforms between layouts
hf          Hugging Face weights: load_hf, read_params and export_hf
native      our directory format: save_pretrained, load_native
runs        models and LoRA adapters from a run directory's checkpoints, read-only
pretrained  from_pretrained and convert, whichever of the three a directory is
commands    `gptjax convert` and `gptjax sample`
"""
