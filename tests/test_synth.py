"""The pdrop_synth benchmark: deterministic generation, disjoint splits, answers that live where the
generator says, the trainable model's local image tokens, and the lmms-eval task through the real CLI."""

import io

import pandas as pd
import pytest
import torch
from PIL import Image
from test_lmms_cli import TASKS, Run, lmms_env  # noqa: F401  (lmms_env is a fixture)

from pdrop_eval import synth
from pdrop_eval.tiny import SYNTH, make_tiny_model

COMMITTED_TEST = synth.DEFAULT_FOLDER / "test.parquet"


def decoded(row) -> bytes:
    return Image.open(io.BytesIO(row["image"])).convert("RGB").tobytes()


def read_scene(image: Image.Image) -> synth.Scene:
    """The objects an exact reader sees in the picture, cell by cell: glyph from the pixel mask,
    colour from the pixel values. Independent of the generator's own scene records."""
    pixels = image.convert("RGB").load()
    items = []
    for row in range(image.height // synth.CELL):
        for col in range(image.width // synth.CELL):
            marks = [[pixels[col * synth.CELL + 1 + dx, row * synth.CELL + 1 + dy] for dx in range(6)] for dy in range(6)]
            colours = {value for line in marks for value in line} - {synth.BACKGROUND}
            if not colours:
                continue
            (colour,) = colours
            mask = tuple("".join("#" if value == colour else "." for value in line) for line in marks)
            (glyph,) = [name for name, drawing in synth.SHAPES.items() if drawing == mask]
            (name,) = [name for name, value in synth.COLORS.items() if value == colour]
            items.append(synth.Item(glyph, name, row, col))
    return synth.Scene(image.width, image.height, tuple(items))


def answer_from_image(image: Image.Image, kind: str, question: str) -> str | None:
    matches = [q.answer for q in synth.questions_about(read_scene(image), kind) if q.text == question]
    return matches[0] if matches else None


def test_generator_is_deterministic_by_seed():
    first, _ = synth.make_split("test", 24, seed=0)
    again, _ = synth.make_split("test", 24, seed=0)
    other, _ = synth.make_split("test", 24, seed=1)
    assert first == again
    assert [r["question"] for r in first] != [r["question"] for r in other]


def test_committed_test_split_is_the_generators_output():
    committed = pd.read_parquet(COMMITTED_TEST).to_dict("records")
    generated, _ = synth.make_split("test", len(committed), seed=0)
    assert len(committed) >= 300
    for stored, fresh in zip(committed, generated):
        assert (stored["question"], stored["answer"], stored["kind"]) == (fresh["question"], fresh["answer"], fresh["kind"])
        assert decoded(stored) == decoded(fresh)  # pixels, not PNG bytes (encoders may differ)


def test_splits_are_disjoint_and_varied():
    splits = synth.make_splits(train_images=300, test_questions=120, turns=3, seed=0)
    test_images = {(r["width"], r["height"], decoded(r)) for r in splits["test"]}
    train_images = {(r["width"], r["height"], decoded(r)) for r in splits["train"]}
    assert len(test_images) == 120 and not test_images & train_images
    assert {(r["width"], r["height"]) for r in splits["test"]} == set(synth.SIZES)
    assert set(r["kind"] for r in splits["test"]) == set(synth.KINDS)
    train_kinds = {kind for r in splits["train"] for kind in r["kind"]}
    assert train_kinds == set(synth.KINDS) | set(synth.WARMUP_KINDS)  # warm-up rows in train only
    for row in splits["train"]:
        if row["kind"][0] == "background_color":  # most pixels show the answer colour
            image = Image.open(io.BytesIO(row["image"])).convert("RGB")
            fill = Image.new("RGB", image.size, synth.COLORS[row["answer"][0]])
            same = sum(a == b for a, b in zip(image.tobytes(), fill.tobytes()))
            assert same > 0.8 * len(image.tobytes())
    # Up to three distinct questions per train image (sparse scenes may allow fewer).
    assert all(1 <= len(r["question"]) == len(set(r["question"])) <= 3 for r in splits["train"])
    assert sum(len(r["question"]) == 3 for r in splits["train"]) > 0.9 * len(splits["train"])


def test_train_split_is_a_curriculum_and_test_scenes_have_distractors():
    def objects(row) -> int:
        return len(read_scene(Image.open(io.BytesIO(row["image"]))).items)

    train, _ = synth.make_split("train", 500, seed=0, turns=1)
    plain = [row for row in train if row["kind"] != "background_color"]  # warm-up rows: coloured background
    early, late = plain[:25], plain[len(plain) // 2 :]
    assert max(map(objects, early)) <= 2 and objects(early[0]) == 1  # the first rows: one object or two
    fewest, most = synth.OBJECTS_PER_IMAGE["train"]
    assert {objects(row) for row in late} == set(range(fewest, most + 1))  # past the curriculum: every count
    test, _ = synth.make_split("test", 120, seed=0)
    assert {objects(row) for row in test} == set(range(synth.OBJECTS_PER_IMAGE["test"][0], synth.OBJECTS_PER_IMAGE["test"][1] + 1))


def test_excluded_scenes_are_never_drawn():
    """The same random stream twice: without the exclusion every scene would repeat."""
    first, scenes = synth.make_split("test", 40, seed=5)
    again, _ = synth.make_split("test", 40, seed=5, exclude=scenes)
    assert not {decoded(r) for r in first} & {decoded(r) for r in again}


def test_every_answer_is_read_from_its_boxes_and_lost_without_any_of_them():
    rows, _ = synth.make_split("test", 120, seed=3)
    assert {row["kind"] for row in rows} == set(synth.KINDS)
    for row in rows:
        image = Image.open(io.BytesIO(row["image"]))
        assert answer_from_image(image, row["kind"], row["question"]) == row["answer"]
        assert row["local"] == (row["kind"] not in synth.GLOBAL_KINDS)
        cells = {tuple(item.box()): item for item in read_scene(image).items}
        boxed = [cells[tuple(int(v) for v in box)] for box in row["boxes"]]  # every box holds an object
        if row["local"]:
            (cell,) = boxed  # the answer in one cell, named by its other attribute
            assert (row["answer"], row["kind"]) in ((cell.color, "color_of_shape"), (cell.glyph, "shape_of_color"))
            assert (cell.glyph if row["kind"] == "color_of_shape" else cell.color) in row["question"]
        else:
            assert len(boxed) == int(row["answer"]) and all(f" {cell.color} " in row["question"] for cell in boxed)
        for box in row["boxes"]:
            assert all(value % synth.CELL == 0 for value in box)  # whole cells: whole image tokens
            erased = image.copy()
            erased.paste(synth.BACKGROUND, [int(v) for v in box])
            assert answer_from_image(erased, row["kind"], row["question"]) != row["answer"]


def test_synth_model_image_tokens_are_local_and_counts_vary(tmp_path):
    """A cell's content reaches only its own high-resolution image token (and the low-resolution base
    view), so dropping that token loses it; anyres gives every image size its own token count."""
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    checkpoint = make_tiny_model(tmp_path / "synth_model", arch="llava_next", spec=SYNTH)
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = LlavaNextForConditionalGeneration.from_pretrained(checkpoint).eval()
    assert SYNTH.patch_size == synth.CELL
    assert sorted(tuple(reversed(p)) for p in SYNTH.grid_pinpoints) == sorted(synth.SIZES)

    def features(image):
        encoded = processor(images=[image], text=["<image>"], return_tensors="pt")
        with torch.no_grad():
            output = model.model.get_image_features(encoded.pixel_values, encoded.image_sizes)
        return torch.cat(list(output.pooler_output))  # (N, d), in the order of the image tokens

    base_tokens = (SYNTH.image_size // SYNTH.patch_size) ** 2
    counts = set()
    for width, height in synth.SIZES:
        scene = synth.Scene(width, height, (synth.Item("triangle", "red", 1, 2),))
        moved = synth.Scene(width, height, (synth.Item("triangle", "blue", 1, 2),))
        first, second = features(scene.render()), features(moved.render())
        changed = ((first - second).abs().amax(-1) > 1e-6).nonzero().flatten().tolist()
        columns = width // synth.CELL
        grid_index = base_tokens + 1 * (columns + 1) + 2  # row 1, column 2; one newline token per row
        assert [i for i in changed if i >= base_tokens] == [grid_index]
        counts.add(len(first))
    assert len(counts) == len(synth.SIZES)


def test_exact_match_scoring():
    assert synth.exact_match(" Red.", "red") and synth.exact_match("3", "3")
    assert not synth.exact_match("red square", "red") and not synth.exact_match("", "red")


def test_vlmeval_tsv_holds_the_test_split(tmp_path):
    written = synth.write_synth(tmp_path, train_images=5, test_questions=12, turns=2, seed=0)
    table = pd.read_csv(written["tsv"], sep="\t")
    test = pd.read_parquet(written["test"])
    assert list(table["index"]) == list(test["id"])
    assert list(table["question"]) == list(test["question"]) and list(table["answer"].astype(str)) == list(test["answer"])
    assert list(table["category"]) == list(test["kind"])
    import base64

    for encoded, row in zip(table["image"], test.to_dict("records")):
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB").tobytes() == decoded(row)


def test_lmms_eval_task_runs_and_scores_through_the_cli(lmms_env, tiny_llava_next, tmp_path):  # noqa: F811
    run = Run(lmms_env, tmp_path / "out", "llava_next_vanilla", f"pretrained={tiny_llava_next},dtype=float32",
              "pdrop_synth", batch_size=4, extra=("--limit", "8"))
    results = run.results()["results"]["pdrop_synth"]
    samples = run.samples("pdrop_synth")
    test = pd.read_parquet(COMMITTED_TEST)
    assert sorted(samples) == list(range(8))
    for doc_id, sample in samples.items():
        assert sample["target"] == test.loc[doc_id, "answer"]
        assert sample["input"] == test.loc[doc_id, "question"]  # the question as training shows it, nothing added
    scores = [float(synth.exact_match(samples[i]["filtered_resps"][0], test.loc[i, "answer"])) for i in range(8)]
    assert results["exact_match,none"] == pytest.approx(sum(scores) / 8)
    local = [s for i, s in enumerate(scores) if test.loc[i, "local"]]
    assert results["local_exact_match,none"] == pytest.approx(sum(local) / len(local))


def test_task_scores_a_right_answer_as_one():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pdrop_synth_utils", TASKS / "pdrop_synth" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    test = pd.read_parquet(COMMITTED_TEST)
    local_doc = test[test["local"]].iloc[0].to_dict()
    count_doc = test[~test["local"]].iloc[0].to_dict()
    assert utils.process_results(local_doc, [f" {local_doc['answer']}."]) == {"exact_match": 1.0, "local_exact_match": 1.0, "global_exact_match": None}
    assert utils.process_results(count_doc, ["9"]) == {"exact_match": 0.0, "local_exact_match": None, "global_exact_match": 0.0}
    assert utils.mean_of_scored([1.0, None, 0.0]) == 0.5
