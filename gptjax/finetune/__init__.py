"""Fine-tuning on top of training/: LoRA, supervised fine-tuning, GPT-1 task heads.

lora         low-rank adapters on the attention and MLP projections
peft_export  LoRA adapters as Hugging Face PEFT files
sft          prompt/response or chat JSONL to rows whose loss covers response tokens only
task_heads   GPT-1 fine-tuning: classification, entailment, similarity, multiple choice (an Objective
             and batches for training/loop)
commands     `gptjax finetune` with GPT-1's recipe where the command line is silent
"""
