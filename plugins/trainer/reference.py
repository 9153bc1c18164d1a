"""The benchmark's reference: a plain transformers Trainer + PEFT + bitsandbytes QLoRA script.

This is what a user would write without the hub (same model, data, batch,
steps, optimizer), so ``qlora-hub bench train`` can report the hub's speed as
a ratio to it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def reference_train(
    base: Path,
    data: Path,
    *,
    steps: int,
    batch_size: int,
    max_length: int,
    lr: float = 2e-4,
    optimizer: str = "paged_adamw_32bit",
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``steps`` steps with the textbook recipe; return seconds and token counts.

    ``device``: ``cpu``, ``cuda[:N]`` or ``auto``; on CUDA the model is placed there
    with ``device_map`` and trained under bf16 autocast, as the QLoRA recipe does.
    """
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from hub.models import resolve_device

    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "right"
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    target = resolve_device(device)
    cuda = target.type == "cuda"
    if cuda:
        torch.cuda.set_device(target)
    model = AutoModelForCausalLM.from_pretrained(
        base,
        quantization_config=quant,
        dtype=torch.bfloat16,
        device_map={"": target.index if cuda else "cpu"},
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    rows = []
    for line in Path(data).read_text().splitlines():
        row = json.loads(line)
        if "text" in row:
            ids = tok(row["text"])["input_ids"][: max_length - 1] + [tok.eos_token_id]
            labels = list(ids)
        else:
            p = tok(row["prompt"])["input_ids"]
            c = tok(row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids, labels = (p + c)[:max_length], ([-100] * len(p) + c)[:max_length]
        rows.append({"input_ids": ids, "labels": labels})

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, list[int]]:
            return rows[i]

    collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    counts = {"tokens": 0, "useful_tokens": 0}

    def counting(batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = collate(batch)
        counts["tokens"] += out["input_ids"].numel()
        counts["useful_tokens"] += int(out["attention_mask"].sum())
        return out

    args = TrainingArguments(
        output_dir="/tmp/qlora-hub-reference",
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        optim=optimizer,
        lr_scheduler_type="cosine",
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=cuda,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=counting)
    started = time.monotonic()
    trainer.train()
    return {"seconds": time.monotonic() - started, **counts}
