"""Persistent state: paths (local, gs://, s3://), run directories and checkpoints.

paths         one path layer over etils.epath/fsspec: atomic writes, copies, moves
tensor_files  safetensors directories read without trusting file names; outputs that appear whole
manifest      the sha256 of every file of a checkpoint step, verified before restore or upload
checkpoint    Orbax checkpoints with a manifest of hashes, verified on restore
mirror        checkpoints on s3://: Orbax commits locally, the mirror uploads each committed step
provenance    where a run came from: the gptjax commit, package versions, host and devices
rundir        a run directory's layout: config, metrics, result, tokenizer, samples
lock          one writer per run directory: flock locally, a renewed lease on gs:// and s3://
"""
