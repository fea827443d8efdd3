"""`pdrop-eval overlap`: answer cells mapped to the image tokens that see them, and the kept share
against chance, checked against the model's own features and by hand."""

import io

import pandas as pd
import pytest
import torch
from PIL import Image

from pdrop_eval import synth
from pdrop_eval.answer_overlap import answer_tokens, document_answer_tokens, stage_overlaps
from pdrop_eval.cli import main
from pdrop_eval.tiny import SYNTH, make_tiny_model


@pytest.fixture(scope="module")
def synth_model(tmp_path_factory):
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    checkpoint = make_tiny_model(tmp_path_factory.mktemp("synth_model"), arch="llava_next", spec=SYNTH)
    return AutoProcessor.from_pretrained(checkpoint), LlavaNextForConditionalGeneration.from_pretrained(checkpoint).eval()


def changed_tokens(processor, model, first, second) -> set[int]:
    """Image tokens whose features differ between two pictures: where the model sees the change."""
    def features(image):
        encoded = processor(images=[image], text=["<image>"], return_tensors="pt")
        with torch.no_grad():
            return torch.cat(list(model.model.get_image_features(encoded.pixel_values, encoded.image_sizes).pooler_output))

    return set(((features(first) - features(second)).abs().amax(-1) > 1e-6).nonzero().flatten().tolist())


def test_answer_tokens_are_where_the_model_sees_the_answer_cell(synth_model):
    from pdrop_eval.token_map import image_token_regions

    processor, model = synth_model
    base_tokens = (SYNTH.image_size // SYNTH.patch_size) ** 2
    for width, height in synth.SIZES:
        row, col = height // synth.CELL - 1, width // synth.CELL - 2
        red = synth.Scene(width, height, (synth.Item("triangle", "red", row, col),))
        blue = synth.Scene(width, height, (synth.Item("triangle", "blue", row, col),))
        seen = {i for i in changed_tokens(processor, model, red.render(), blue.render()) if i >= base_tokens}  # full resolution
        regions = image_token_regions(processor, [(width, height)])
        assert answer_tokens(regions, [red.items[0].box()]) == seen and len(seen) == 1
    assert answer_tokens(regions, [[0, 0, 1, 1]]) == set()  # a box holding no cell centre


def test_stage_overlaps_by_hand():
    samples = [
        ({5}, 20, [[1, 5, 7, 9, 11], [5, 7]]),  # answer kept at both stages; 5/20 then 2/20 kept
        ({3}, 10, [[1, 2, 3], [1]]),  # kept at stage 1 only; 3/10 then 1/10
        ({4, 6}, 40, [[0, 1, 2, 6], [0, 1]]),  # two answer cells, one kept at stage 1; 4/40 then 2/40
    ]
    first, second = stage_overlaps(samples)
    assert (first.stage, first.questions, second.stage) == (1, 3, 2)
    assert first.answer_kept == pytest.approx(1.0) and second.answer_kept == pytest.approx(1 / 3)
    assert first.chance == pytest.approx((5 / 20 + 3 / 10 + 4 / 40) / 3)
    assert second.chance == pytest.approx((2 / 20 + 1 / 10 + 2 / 40) / 3)
    with pytest.raises(ValueError, match="number of drop stages"):
        stage_overlaps([samples[0], ({1}, 4, [[1]])])
    with pytest.raises(ValueError, match="no local question"):
        stage_overlaps([])


def test_overlap_needs_a_run_with_kept_tokens(tmp_path, capsys):
    assert main(["overlap", "--run", str(tmp_path)]) == 2
    assert "save_kept=true" in capsys.readouterr().err


def test_layer_ranking_agrees_with_the_unmodified_models_attention():
    """`rank_layers` (the engine's scoring on each layer's input) against the eager attention weights
    of the stock model: last prompt token's row, heads averaged, image columns."""
    from pdrop_eval.answer_overlap import rank_layers
    from pdrop_eval.checkpoints import shipped_checkpoint
    from pdrop_eval.token_map import image_token_regions
    from pdrop_eval.wrapper import LlavaRunner, Query

    checkpoint, data, limit, fractions = shipped_checkpoint("vanilla"), synth.DEFAULT_FOLDER / "test.parquet", 12, (0.5, 0.25)
    rankings = rank_layers(checkpoint, data, fractions, limit)

    runner = LlavaRunner.load(str(checkpoint), attn_implementation="eager")
    documents = pd.read_parquet(data)
    hits = torch.zeros(len(rankings), len(fractions))
    for doc in documents[documents["local"]].head(limit).itertuples():
        query = Query.from_text(doc.question, [Image.open(io.BytesIO(doc.image))])
        inputs = runner._encode([query], [runner.render(query)])
        with torch.no_grad():
            attentions = runner.model(**inputs, output_attentions=True, use_cache=False).attentions  # (1, H, T, T) each
        image = (inputs["input_ids"][0] == runner.model.config.image_token_index).nonzero().flatten()
        answer = answer_tokens(image_token_regions(runner.processor, [(doc.width, doc.height)]), list(doc.boxes))
        for layer, weights in enumerate(attentions):
            order = weights[0, :, -1, image].float().mean(0).argsort(descending=True, stable=True).tolist()
            best = min(order.index(token) for token in answer)
            hits[layer] += torch.tensor([float(best < int(len(image) * f)) for f in fractions])
    assert [r.layer for r in rankings] == list(range(len(rankings))) and rankings[0].questions == limit
    found = torch.tensor([[r.in_top[f] for f in fractions] for r in rankings])
    assert torch.equal(found * limit, hits)
    assert found.std() > 0  # the trained model's layers differ: a sanity check that ranking ran


def test_pyramid_drop_keeps_the_answer_cell_that_random_drop_loses():
    """The check that a drop keeps the right tokens, not only the right number: on the shipped
    vanilla-trained model, PyramidDrop λ=0.5 at 8/16/24 keeps the answer cell's token through every
    stage far more often than the random control at the same counts, which keeps it at chance."""
    from pdrop_eval.checkpoints import shipped_checkpoint
    from pdrop_eval.engine.config import DropConfig
    from pdrop_eval.wrapper import LlavaRunner, Query

    data = synth.DEFAULT_FOLDER / "test.parquet"
    documents = pd.read_parquet(data)
    documents = documents[documents["local"]].head(100)
    queries = [Query.from_text(doc.question, [Image.open(io.BytesIO(doc.image))]) for doc in documents.itertuples()]
    schedule = DropConfig.pyramid(layer_list=(8, 16, 24), ratio=0.5)
    overlaps = {}
    for name, drop in (("pyramid", schedule), ("random", DropConfig.random(schedule))):
        runner = LlavaRunner.load(str(shipped_checkpoint("vanilla")), drop=drop)
        generations = runner.generate(queries, max_new_tokens=1, batch_size=8)  # the drop happens in prefill
        samples = []
        for doc, generation in zip(documents.itertuples(), generations):
            stats = generation.stats
            answer = document_answer_tokens(runner.processor, doc.id, doc.width, doc.height, doc.boxes, stats.num_image_tokens, data)
            samples.append((answer, stats.num_image_tokens, stats.kept))
        overlaps[name] = stage_overlaps(samples)
    for pyramid, random in zip(overlaps["pyramid"], overlaps["random"]):
        assert pyramid.chance == pytest.approx(random.chance)  # the same counts
        assert abs(random.answer_kept - random.chance) < 0.15  # a uniform draw keeps the answer at chance
        assert pyramid.answer_kept > random.answer_kept + 0.25
    assert overlaps["pyramid"][-1].answer_kept > 3 * overlaps["pyramid"][-1].chance
    # measured: 0.83 / 0.58 / 0.46 after layers 8 / 16 / 24 (chance 0.50 / 0.25 / 0.12)


def test_layer_ranking_command(capsys):
    from pdrop_eval.checkpoints import shipped_checkpoint

    assert main(["overlap", "--pretrained", str(shipped_checkpoint("vanilla")), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "ranked 2/2 questions" in out and "| layer | best 50% | best 25% | best 12.5% |" in out
    assert "| 31 | " in out
    assert main(["overlap", "--run", "x", "--limit", "2"]) == 2
    assert "--limit" in capsys.readouterr().err
