"""Training with a drop config (forward + backward with labels) against the stock model and an
independent re-implementation of the official training rule (tests/drop_reference.py).

float64 models, so "equal" means equal to rounding (sdpa: transformers' eager attention turns a
fully masked float64 row into NaN, and re-packed batches have such padding rows; the reference runs
unpadded samples with eager attention, to read the unmodified layer's true attention weights)."""

import pytest
import torch
from drop_reference import answer_query_rows, language_model_embeddings, logits, pyramid_drop, survivors_loss
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from pdrop_eval import DropConfig, apply_drop

PYRAMID = DropConfig.pyramid(layer_list=[8, 16, 24], ratio=0.5)
CONVERSATIONS = [
    [("What color is the square in the image?", "red")],
    [("Which shape is in the top left corner?", "circle"), ("Is there a red circle?", "yes")],  # two answer spans
    [("What?", "one two three")],
]
IMAGE_SIZES = [(128, 64), (64, 64), (64, 128)]  # different N per sample (anyres)


def _image(seed: int, size) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8).numpy())


def _load(path):
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float64)
    return model.train(), AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def llava_next(tiny_llava_next):
    return _load(tiny_llava_next)


def _conversation(turns) -> tuple[str, list[tuple[int, int]]]:
    """The training text and the character spans of the answers (answer plus end of turn)."""
    text, spans = "", []
    for number, (question, answer) in enumerate(turns):
        text += "USER: " + ("<image>\n" if number == 0 else "") + question + " ASSISTANT:"
        spans.append((len(text), len(text) + len(answer) + 5))
        text += " " + answer + "</s>"
    return text, spans


def _batch(processor, samples, padding_side="right", answered=None):
    """Padded inputs and labels (-100 except on answer tokens) for `samples` (indices into
    CONVERSATIONS); `answered[i] = False` gives sample i no answer tokens at all."""
    processor.tokenizer.padding_side = padding_side
    images = [_image(i, IMAGE_SIZES[i]) for i in samples]
    texts, spans = zip(*(_conversation(CONVERSATIONS[i]) for i in samples))
    inputs = processor(images=images, text=list(texts), return_tensors="pt", padding=True)
    inputs["pixel_values"] = inputs["pixel_values"].double()
    labels = torch.full_like(inputs["input_ids"], -100)
    for row, (image, text, answer_spans) in enumerate(zip(images, texts, spans)):
        if answered is not None and not answered[row]:
            continue
        pad = int((inputs["attention_mask"][row] == 0).sum()) if padding_side == "left" else 0
        for start, end in answer_spans:
            first, last = (pad + len(processor(images=[image], text=[text[:cut]]).input_ids[0]) for cut in (start, end))
            labels[row, first:last] = inputs["input_ids"][row, first:last]
    inputs["labels"] = labels
    if padding_side == "left":  # positions count real tokens only (as generate() does), so they match the sample alone
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(1) - 1).clamp(min=0)
    return inputs


def _sample(inputs, row: int) -> dict:
    """Row `row` of a padded batch, unpadded, as a batch of one."""
    keep = inputs["attention_mask"][row].bool()
    sample = {key: inputs[key][row : row + 1, keep] for key in ("input_ids", "attention_mask", "labels")}  # positions: 0, 1, ...
    return {**sample, "pixel_values": inputs["pixel_values"][row : row + 1], "image_sizes": inputs["image_sizes"][row : row + 1]}


def _loss_and_gradients(model, inputs, config=None):
    model.zero_grad()
    handle = apply_drop(model, config) if config else None
    try:
        output = model(**inputs)
        output.loss.backward()
        stats = handle.last_stats if handle else None
    finally:
        if handle:
            handle.remove()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return output, gradients, stats


def _per_sample_losses(model, logits_, labels) -> list[torch.Tensor]:
    vocab = model.config.text_config.vocab_size
    return [model.loss_function(logits=logits_[b : b + 1], labels=labels[b : b + 1], vocab_size=vocab) for b in range(len(labels))]


def _assert_same_gradients(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-6, atol=1e-10, msg=name)


# ----- λ = 1 is the stock model, loss and every gradient -------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_lossless_training_equals_stock_loss_and_gradients(llava_next, padding_side):
    model, processor = llava_next
    inputs = _batch(processor, [0, 1], padding_side)
    stock, stock_gradients, _ = _loss_and_gradients(model, inputs)
    dropped, gradients, stats = _loss_and_gradients(model, inputs, DropConfig.pyramid(ratio=1.0))
    torch.testing.assert_close(dropped.loss, stock.loss, rtol=1e-9, atol=0)
    _assert_same_gradients(gradients, stock_gradients)
    assert any("vision_tower" in name for name in gradients) and any("projector" in name for name in gradients)
    assert all(s.image_tokens_per_layer == (s.num_image_tokens,) * 32 for s in stats)


# ----- λ < 1 is the official training rule ---------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_training_loss_and_gradients_equal_an_independent_reimplementation(llava_next, padding_side):
    model, processor = llava_next
    inputs = _batch(processor, [0, 1, 2], padding_side)
    output, gradients, stats = _loss_and_gradients(model, inputs, PYRAMID)

    model.zero_grad()
    total, count = 0.0, 0
    for row in range(3):
        sample = _sample(inputs, row)
        labels = sample["labels"][0].tolist()
        is_image = (sample["input_ids"][0] == model.config.image_token_id).tolist()
        query_rows = answer_query_rows(labels)
        assert len(query_rows) == len(CONVERSATIONS[row])
        run = pyramid_drop(
            model, language_model_embeddings(model, sample), is_image=is_image, query_rows=query_rows, layer_list=[8, 16, 24], ratio=0.5, compact=True
        )
        assert [list(k) for k in stats[row].kept] == run.kept
        # the logits the engine's loss reads, at every surviving (text and kept image) position
        engine_logits = output.logits[row, inputs["attention_mask"][row].bool()][run.survivors]
        torch.testing.assert_close(engine_logits, logits(model, run.outputs[run.survivors]), rtol=1e-6, atol=1e-8)
        total = total + survivors_loss(model, run, labels)
        count += sum(label != -100 for label in labels[1:])
    reference = total / count
    reference.backward()
    torch.testing.assert_close(output.loss, reference.detach(), rtol=1e-6, atol=0)
    _assert_same_gradients(gradients, {name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert all(s.image_tokens_per_layer[-1] == int(s.num_image_tokens * 0.125) for s in stats)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padded_batch_gives_each_sample_its_loss_alone(llava_next, padding_side):
    model, processor = llava_next
    inputs = _batch(processor, [0, 1, 2], padding_side)
    with apply_drop(model, PYRAMID) as handle:
        batched = model(**inputs)
        batched_stats = handle.last_stats
        losses = _per_sample_losses(model, batched.logits, inputs["labels"])
        for row in range(3):
            alone = model(**_sample(inputs, row))
            torch.testing.assert_close(losses[row], alone.loss, rtol=1e-9, atol=0)
            assert handle.last_stats[0] == batched_stats[row]


def test_sample_without_answer_tokens_is_not_dropped(llava_next):
    model, processor = llava_next
    inputs = _batch(processor, [0, 1], answered=[True, False])
    with torch.no_grad():
        stock = model(**inputs).logits
        with apply_drop(model, PYRAMID) as handle:
            dropped = model(**inputs).logits
    unanswered, answered = handle.last_stats[1], handle.last_stats[0]
    n = unanswered.num_image_tokens
    assert unanswered.image_tokens_per_layer == (n,) * 32
    assert unanswered.kept == (tuple(range(n)),) * 3
    valid = inputs["attention_mask"][1].bool()
    torch.testing.assert_close(dropped[1, valid], stock[1, valid], rtol=1e-7, atol=1e-9)
    assert answered.image_tokens_per_layer[-1] == int(answered.num_image_tokens * 0.125)


# ----- the machinery of training ---------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_llava_next):
    model, processor = _load(tiny_llava_next)
    inputs = _batch(processor, [0, 1])
    plain, plain_gradients, _ = _loss_and_gradients(model, inputs, PYRAMID)

    model.activation_checkpointing_enable()  # formerly gradient_checkpointing_enable
    attention_calls = []
    hook = model.model.language_model.layers[20].self_attn.register_forward_pre_hook(lambda *_: attention_calls.append(1))
    checkpointed, gradients, _ = _loss_and_gradients(model, inputs, PYRAMID)
    hook.remove()
    assert len(attention_calls) == 2, "the layer should be recomputed in backward"
    torch.testing.assert_close(checkpointed.loss, plain.loss, rtol=1e-12, atol=0)
    _assert_same_gradients(gradients, plain_gradients)


def test_ranking_builds_no_autograd_graph(llava_next):
    """The boundary layer's k_proj runs twice: once to rank (whole sequence, no graph), once in the
    layer itself (the kept tokens, with graph)."""
    model, processor = llava_next
    inputs = _batch(processor, [0])
    calls = []
    hook = model.model.language_model.layers[8].self_attn.k_proj.register_forward_hook(
        lambda module, args, out: calls.append((out.shape[1], out.requires_grad))
    )
    try:
        _loss_and_gradients(model, inputs, PYRAMID)
    finally:
        hook.remove()
    (ranked_len, ranked_grad), (layer_len, layer_grad) = calls
    assert ranked_len == inputs["input_ids"].shape[1] > layer_len
    assert (ranked_grad, layer_grad) == (False, True)


def test_eval_mode_keeps_the_last_prompt_token_rule(llava_next):
    model, processor = llava_next
    inputs = _batch(processor, [1])
    model.eval()
    try:
        with apply_drop(model, PYRAMID) as handle, torch.no_grad():
            model(**inputs)
            with_labels = handle.last_stats
            model(**{k: v for k, v in inputs.items() if k != "labels"})
            assert handle.last_stats == with_labels
    finally:
        model.train()
    with apply_drop(model, PYRAMID) as handle, torch.no_grad():
        model(**inputs)
    assert handle.last_stats[0].kept != with_labels[0].kept  # training ranks by the answer spans instead


def test_training_refuses_what_makes_no_sense(llava_next):
    model, processor = llava_next
    inputs = _batch(processor, [0])
    unlabelled = {k: v for k, v in inputs.items() if k != "labels"}
    image_id = model.config.image_token_id
    with apply_drop(model, PYRAMID), torch.no_grad():
        with pytest.raises(ValueError, match="needs labels"):
            model(**unlabelled)
        with pytest.raises(ValueError, match=r"KV caching .* model.train\(\)"):
            model(**inputs, use_cache=True)
        with pytest.raises(ValueError, match=r"KV caching .* model.train\(\)"):
            model.generate(**unlabelled, max_new_tokens=2)
        labelled_image = inputs["labels"].clone()
        labelled_image[inputs["input_ids"] == image_id] = image_id
        with pytest.raises(ValueError, match=r"samples \[0\] mark image tokens as answer tokens"):
            model(**{**inputs, "labels": labelled_image})
        answer_after_image = inputs["labels"].clone()
        last_image = int((inputs["input_ids"][0] == image_id).nonzero().max())
        answer_after_image[0, last_image + 1] = inputs["input_ids"][0, last_image + 1]
        with pytest.raises(ValueError, match="answer span starts right after an image token"):
            model(**{**inputs, "labels": answer_after_image})
