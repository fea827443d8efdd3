"""The shared model runner on the families beyond LLaVA: every processor output reaches the model, and
scoring a padded batch leaves positions to a family that computes its own (Qwen2.5-VL's 3-D M-RoPE)."""

import pytest
import torch
from PIL import Image

from pdrop_eval.wrapper import ModelRunner, Query

QWEN_SIZE = {"size": {"shortest_edge": 256, "longest_edge": 16384}}  # the tiny model's own pixel range


def stock_logprob(runner: ModelRunner, query: Query, continuation: str) -> float:
    """The continuation's log-probability from the model alone (one sample, no padding, the processor's
    every output, the model's own positions)."""
    prompt = runner.render(query)
    inputs = runner.processor(images=list(query.images) or None, text=[prompt + continuation], return_tensors="pt")
    length = len(runner.tokenizer(prompt + continuation).input_ids) - len(runner.tokenizer(prompt).input_ids)
    with torch.no_grad():
        logits = runner.model(**inputs).logits.float()
    logprobs = torch.log_softmax(logits[0, -length - 1 : -1], dim=-1)
    return logprobs.gather(-1, inputs["input_ids"][0, -length:, None]).sum().item()


@pytest.mark.parametrize("fixture, processor_options", [("tiny_qwen2_5_vl", QWEN_SIZE), ("tiny_llava_onevision", {})])
def test_a_padded_batch_scores_as_the_stock_model_scores_each_prompt(fixture, processor_options, request):
    runner = ModelRunner.load(str(request.getfixturevalue(fixture)), dtype="float32", processor_options=processor_options)
    wide, tall = Image.new("RGB", (64, 32), (200, 30, 30)), Image.new("RGB", (32, 96), (30, 30, 200))
    queries = [Query.from_parts([wide, "Which color is this picture, red or blue?"]), Query.from_parts([tall, "Color?"])]
    scores = runner.loglikelihood_batch(queries, [" red", " blue"])  # left-padded: the prompts differ in length
    for query, continuation, score in zip(queries, [" red", " blue"], scores):
        assert score.logprob == pytest.approx(stock_logprob(runner, query, continuation), abs=1e-4)
    runner.close()
