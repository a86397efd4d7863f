"""Text to token ids, and token ids to training batches.

tokenizer   char, GPT-2 BPE (tiktoken) and Hugging Face tokenizer.json tokenizers
text_files  .txt/.jsonl documents to a token file, in parallel and cached
jsonl       JSON Lines files read with errors that name the line
remote      token files on object storage read in place: ranged reads through a bounded cache
loader      corpora and token files for a config, and the deterministic resumable batch loader
"""
