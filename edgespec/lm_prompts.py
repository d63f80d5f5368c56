"""Prompts for a general (chat) language model: the camera's event descriptions and general text.

An event prompt asks the model to write the operator's log line for what the camera measured:
the caption of the device's own grammar is the description, the chat template wraps it. The
same builder makes the training prompts of a draft (``edgespec train-draft``) and the
benchmark's event workload, from disjoint seed ranges.
"""

from __future__ import annotations

import random

EVENT_INSTRUCTION = "A security camera reports: {caption}. Write one short sentence for the operator's log."

GENERAL_PROMPTS = (
    "What is a motion sensor used for?",
    "Explain in two sentences why the sky is blue.",
    "Give three tips for keeping a warehouse safe.",
    "Write a short note reminding staff to close the loading door.",
    "What does an MQTT broker do?",
    "Describe a busy parking lot in one sentence.",
    "How do I reset a home router?",
    "Summarise the benefits of regular exercise.",
    "What is the capital of France, and what is it known for?",
    "Write a friendly greeting for a visitor at a front desk.",
    "List three things a delivery driver should check before leaving.",
    "Why do cameras need good lighting at night?",
    "Explain what a battery's capacity means.",
    "Write a one-line weather report for a rainy morning.",
    "What should you do if you see smoke in a building?",
    "Describe a cat sitting on a windowsill.",
    "How does a bicycle stay upright?",
    "Write a short thank-you message to a colleague.",
    "What is the difference between a car and a truck?",
    "Give a simple recipe for a cup of tea.",
    "Why is it important to lock doors at night?",
    "Explain what a speed limit is for.",
    "Write a sentence about people walking in a park.",
    "What is a good way to organise a storage room?",
)

HELD_OUT_SEED0 = 5_000_000  # event scenes and general prompts for measuring them


def event_description(seed: int) -> str:
    """The device grammar's caption of a synthetic scene's ground truth (what the camera says)."""
    from camera_node.captions import caption_for_facts
    from camera_node.scene import ground_truth, random_scene

    facts = [{**f, "direction": f["direction"][0]} for f in ground_truth(random_scene(seed))]  # type: ignore[index]
    return caption_for_facts(facts, random.Random(seed))


def event_prompt(seed: int) -> str:
    return EVENT_INSTRUCTION.format(caption=event_description(seed))


def chat_ids(tokenizer, user_text: str) -> list[int]:
    """Token ids of one user turn in the model's chat template, ready for the reply."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                         add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids_for(lm, text: str, *, raw: bool = False) -> list[int]:
    """A user's prompt as the model expects it: a user turn of its chat template when it has
    one (an instruction-tuned model), else (or with ``raw``) the text as it is."""
    if getattr(lm.tokenizer, "chat_template", None) and not raw:
        return chat_ids(lm.tokenizer, text)
    return lm.encode(text)


def prompt_set(kind: str, n: int, *, held_out: bool, seed: int = 0) -> list[str]:
    """``n`` prompts of ``kind`` ("event" or "general"); held-out ones never overlap training ones."""
    if kind == "event":
        base = HELD_OUT_SEED0 if held_out else seed * 100_000
        return [event_prompt(base + i) for i in range(n)]
    if kind == "general":
        half = len(GENERAL_PROMPTS) * 3 // 4  # the last quarter is held out
        pool = GENERAL_PROMPTS[half:] if held_out else GENERAL_PROMPTS[:half]
        return [pool[i % len(pool)] for i in range(n)]
    raise ValueError(f"prompt kind {kind!r}: event or general")
